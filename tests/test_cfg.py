import subprocess
import sys
from types import SimpleNamespace

import pytest

import cfg
from sam2_train.methods.registry import registered

SEED_2D = ("-net sam2 -exp_name ACDC_SSS -vis 1 -sam_ckpt ./checkpoints/sam2_hiera_small.pt -sam_config sam2_hiera_s "
           "-image_size 1024 -out_size 1024 -b 4 -val_freq 1 -dataset ACDC -data_path ./data/ACDC")
SEED_3D = ("-net sam2 -exp_name BHSD_SSS -sam_ckpt ./checkpoints/sam2_hiera_small.pt -sam_config sam2_hiera_s "
           "-image_size 1024 -val_freq 1 -prompt bbox -prompt_freq 2 -dataset bhsd -data_path ./data/bhsd")
SAM2_METHODS = ("supervised", "sss_labeled_only", "fixmatch", "sss")
LIGHT_METHODS = ("supervised", "fixmatch", "mean_teacher", "km_onetime", "km_continuous", "semisam", "sammatch")


def methods_of(student, script):
    """The -method names registered for ``student`` in ``train_<script>.py``."""
    return {k.name for k in registered() if student in k.students and script in k.scripts}


def test_seed_2d_command_parses():
    c = cfg.parse_config(SEED_2D.split(), script="2d")
    # -val_freq 1: every -val_every (ACDC preset 1000)
    assert (c.data.dataset, c.model.image_size, c.method.out_size, c.run.batch_size, c.run.val_every,
            c.run.vis) == ("acdc", 1024, 1024, 4, 1000, True)
    assert c.model.sam_config == "sam2_hiera_s" and c.model.sam_ckpt == "./checkpoints/sam2_hiera_small.pt"
    assert c.run.exp_name == "ACDC_SSS" and c.data.data_path == "./data/ACDC" and c.data.labeled_num == 3


def test_seed_3d_command_parses():
    c = cfg.parse_config(SEED_3D.split(), script="3d")
    assert (c.data.dataset, c.method.prompt, c.infer.prompt_freq, c.model.image_size) == ("bhsd", "bbox", 2, 1024)
    assert c.run.batch_size == 1 and c.data.video_length == 8 and c.run.vis is False


@pytest.mark.parametrize("value,expected", [("1", True), ("0", False), ("true", True), ("False", False)])
def test_bool_flags(value, expected):
    assert cfg.parse_config(["-vis", value]).run.vis is expected


def test_bool_flag_alone_means_on_and_omitted_means_off():
    assert cfg.parse_config(["-vis"]).run.vis is True
    assert cfg.parse_config([]).run.vis is False


def test_demo_defaults_are_small():
    c = cfg.parse_config([])
    assert c.data.dataset == "demo" and c.model.image_size == 128 and c.model.sam_ckpt == "none"
    assert c.model.sam_config == "sam2_hiera_t"
    assert c.optim.encoder_lr_mult == 0.0  # random Hiera frozen on the demo; trained on real data
    assert cfg.parse_config(["-dataset", "acdc"]).optim.encoder_lr_mult == 1.0
    assert cfg.parse_config([], script="3d").data.data_path.endswith("demo_bhsd")


def test_baselines_switch_off_dfe_and_pcsw():
    c = cfg.parse_config(["-method", "fixmatch"])
    assert c.model.dfe is False and c.method.pcsw is False


@pytest.mark.parametrize("argv,needle", [
    (["-dataset", "mnist"], "allowed: acdc, bhsd, custom, demo"),
    (["-method", "unimatch"], "allowed: supervised, fixmatch, sss"),
    (["-infer", "gt"], "allowed: coarse, boxes, pcsw"),
    (["-image_size", "100"], "multiple of 32"),
    (["-vis", "maybe"], "expected a boolean"),
    (["-amp", "fp16"], "allowed: auto, bf16, off"),
])
def test_bad_values_exit_with_one_line(argv, needle):
    code = "import cfg, sys; cfg.parse_config(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       cwd=cfg.__file__.rsplit("/", 1)[0])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.parametrize("dataset,script", [("acdc", "2d"), ("bhsd", "3d"), ("demo", "2d"), ("demo", "3d"),
                                            ("custom", "2d")])
def test_every_method_gets_the_same_budget_cadence_weights_and_inference(dataset, script):
    """A fair comparison: -method changes none of max_iters, val_every, the evaluated weights or -infer (per
    student: SAM-2 students infer with pcsw, the lightweight ones with their own prediction)."""
    students = [("sam2", SAM2_METHODS, "pcsw")] + ([("unet", LIGHT_METHODS, "student")] if script == "2d" else [])
    for student, methods, want in students:
        assert methods_of(student, script) == set(methods)
        configs = {m: cfg.parse_config(["-dataset", dataset, "-student", student, "-method", m], script=script)
                   for m in methods}
        fields = {(c.run.max_iters, c.run.val_every, c.run.ema, c.infer.infer) for c in configs.values()}
        assert len(fields) == 1, {m: (c.run, c.infer) for m, c in configs.items()}
        max_iters, val_every, ema, infer = fields.pop()
        assert max_iters > 0 and 0 < val_every <= max_iters and ema > 0 and infer == want


def test_presets_come_from_yaml_and_flags_override_them():
    c = cfg.parse_config(["-dataset", "acdc"])
    assert (c.run.max_iters, c.run.val_every, c.model.image_size) == (30000, 1000, 1024)   # configs/presets.yaml
    b = cfg.parse_config(["-dataset", "acdc", "-max_iters", "50", "-val_every", "10", "-val_freq", "2"])
    assert b.run.max_iters == 50 and b.run.val_every == 20
    assert cfg.parse_config(["-dataset", "demo"], script="3d").data.labeled_num is None  # every training volume
    demo_3d = cfg.parse_config(["-dataset", "demo"], script="3d")
    assert (demo_3d.semi.ce_weights, demo_3d.data.fg_oversample, demo_3d.data.video_length) == (
        (1, 4, 2, 4, 3, 4), 0.67, 6)
    demo_2d = cfg.parse_config(["-dataset", "demo"])
    assert (demo_2d.semi.ce_weights, demo_2d.data.fg_oversample, demo_2d.data.video_length) == ((), 0.33, 8)
    assert cfg.parse_config(["-dataset", "demo", "-ce_weights", "1,1,1,1,1,1"],
                            script="3d").semi.ce_weights == (1,) * 6


def test_one_inference_mode_for_every_sam2_method():
    """-pcsw 0 changes the training prompts only: every SAM-2 method (the ablation too) infers with PCSW unless
    -infer says otherwise, so that the rows of one comparison are scored in one mode."""
    assert [cfg.parse_config(f).infer.infer for f in (["-pcsw", "0"], ["-method", "supervised"],
                                                      ["-method", "fixmatch"], ["-dfe", "0"], [])] == ["pcsw"] * 5
    assert cfg.parse_config(["-pcsw", "0", "-infer", "coarse"]).infer.infer == "coarse"
    assert cfg.parse_config(["-student", "unet", "-method", "supervised"]).infer.infer == "student"


@pytest.mark.parametrize("method", ["supervised", "fixmatch"])
@pytest.mark.parametrize("flag", ["-dfe", "-pcsw"])
def test_dfe_and_pcsw_are_refused_outside_sss(method, flag, capsys):
    """A baseline never trains with DFE or PCSW; asking for them is an error, not a silent override."""
    with pytest.raises(SystemExit) as e:
        cfg.parse_config(["-method", method, flag, "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert f"{flag} 1: DFE and PCSW are parts of SSS; -method {method} trains with {flag} 0" in err
    off = cfg.parse_config(["-method", method, flag, "0"])
    assert (off.model.dfe, off.method.pcsw) == (False, False)
    sss = cfg.parse_config(["-method", "sss"])
    assert (sss.model.dfe, sss.method.pcsw) == (True, True)


def test_config_is_typed_and_frozen():
    import dataclasses
    splits = SimpleNamespace(num_classes=3, class_names=("RV", "Myo", "LV"), info={})
    c = cfg.with_data(cfg.parse_config(["-dataset", "demo"]), splits)
    assert c.model.num_classes == 3 and c.model.freeze_encoder and c.pcsw.tau == 0.8 and c.semi.method == "sss"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.run.max_iters = 1
