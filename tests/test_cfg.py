import subprocess
import sys

import pytest

import cfg

SEED_2D = ("-net sam2 -exp_name ACDC_SSS -vis 1 -sam_ckpt ./checkpoints/sam2_hiera_small.pt -sam_config sam2_hiera_s "
           "-image_size 1024 -out_size 1024 -b 4 -val_freq 1 -dataset ACDC -data_path ./data/ACDC")
SEED_3D = ("-net sam2 -exp_name BHSD_SSS -sam_ckpt ./checkpoints/sam2_hiera_small.pt -sam_config sam2_hiera_s "
           "-image_size 1024 -val_freq 1 -prompt bbox -prompt_freq 2 -dataset bhsd -data_path ./data/bhsd")


def test_seed_2d_command_parses():
    a = cfg.parse_args(SEED_2D.split(), script="2d")
    assert (a.dataset, a.image_size, a.out_size, a.b, a.val_freq, a.vis) == ("acdc", 1024, 1024, 4, 1, True)
    assert a.sam_config == "sam2_hiera_s" and a.sam_ckpt == "./checkpoints/sam2_hiera_small.pt"
    assert a.exp_name == "ACDC_SSS" and a.data_path == "./data/ACDC" and a.labeled_num == 3


def test_seed_3d_command_parses():
    a = cfg.parse_args(SEED_3D.split(), script="3d")
    assert (a.dataset, a.prompt, a.prompt_freq, a.image_size) == ("bhsd", "bbox", 2, 1024)
    assert a.b == 1 and a.video_length == 8 and a.vis is False


@pytest.mark.parametrize("value,expected", [("1", True), ("0", False), ("true", True), ("False", False)])
def test_bool_flags(value, expected):
    assert cfg.parse_args(["-vis", value]).vis is expected


def test_bool_flag_alone_means_on_and_omitted_means_off():
    assert cfg.parse_args(["-vis"]).vis is True
    assert cfg.parse_args([]).vis is False


def test_demo_defaults_are_small():
    a = cfg.parse_args([])
    assert a.dataset == "demo" and a.image_size == 128 and a.sam_ckpt == "none" and a.sam_config == "sam2_hiera_t"
    assert a.encoder_lr_mult == 0.0  # random Hiera frozen on the demo; trained on real data
    assert cfg.parse_args(["-dataset", "acdc"]).encoder_lr_mult == 1.0
    assert cfg.parse_args([], script="3d").data_path.endswith("demo_bhsd")


def test_baselines_switch_off_dfe_and_pcsw():
    a = cfg.parse_args(["-method", "fixmatch"])
    assert a.dfe is False and a.pcsw is False


@pytest.mark.parametrize("argv,needle", [
    (["-dataset", "mnist"], "allowed: acdc, bhsd, custom, demo"),
    (["-method", "unimatch"], "allowed: supervised, fixmatch, sss"),
    (["-infer", "gt"], "allowed: coarse, boxes, pcsw"),
    (["-image_size", "100"], "multiple of 32"),
    (["-vis", "maybe"], "expected a boolean"),
    (["-amp", "fp16"], "allowed: auto, bf16, off"),
])
def test_bad_values_exit_with_one_line(argv, needle):
    code = "import cfg, sys; cfg.parse_args(sys.argv[1:])"
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cfg.__file__.rsplit("/", 1)[0])
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


@pytest.mark.parametrize("dataset,script", [("acdc", "2d"), ("bhsd", "3d"), ("demo", "2d"), ("demo", "3d"),
                                            ("custom", "2d")])
def test_every_method_gets_the_same_budget_cadence_weights_and_inference(dataset, script):
    """A fair comparison: -method changes none of max_iters, val_every, the evaluated weights or -infer (per
    student: SAM-2 students infer with pcsw, the lightweight ones with their own prediction)."""
    k = 5 if script == "3d" else 3     # BHSD / ACDC classes
    students = [("sam2", cfg.SAM2_METHODS, "pcsw")] + ([("unet", cfg.LIGHT_METHODS, "student")] if script == "2d" else [])
    for student, methods, want in students:
        runs = {m: cfg.to_config(cfg.parse_args(["-dataset", dataset, "-student", student, "-method", m],
                                                script=script), k).run for m in methods}
        fields = {(r.max_iters, r.val_every, r.ema, r.infer) for r in runs.values()}
        assert len(fields) == 1, runs
        max_iters, val_every, ema, infer = fields.pop()
        assert max_iters > 0 and 0 < val_every <= max_iters and ema > 0 and infer == want


def test_presets_come_from_yaml_and_flags_override_them():
    a = cfg.parse_args(["-dataset", "acdc"])
    assert (a.max_iters, a.val_every, a.image_size) == (30000, 1000, 1024)   # configs/presets.yaml
    b = cfg.parse_args(["-dataset", "acdc", "-max_iters", "50", "-val_every", "10", "-val_freq", "2"])
    assert cfg.to_config(b, 3).run.max_iters == 50 and cfg.to_config(b, 3).run.val_every == 20
    assert cfg.parse_args(["-dataset", "demo"], script="3d").labeled_num is None  # every training volume
    demo_3d = cfg.parse_args(["-dataset", "demo"], script="3d")
    assert (demo_3d.ce_weights, demo_3d.fg_oversample, demo_3d.video_length) == ((1, 4, 2, 4, 3, 4), 0.67, 6)
    demo_2d = cfg.parse_args(["-dataset", "demo"])
    assert (demo_2d.ce_weights, demo_2d.fg_oversample, demo_2d.video_length) == ((), 0.33, 8)
    assert cfg.parse_args(["-dataset", "demo", "-ce_weights", "1,1,1,1,1,1"], script="3d").ce_weights == (1,) * 6


def test_one_inference_mode_for_every_sam2_method():
    """-pcsw 0 changes the training prompts only: every SAM-2 method (the ablation too) infers with PCSW unless
    -infer says otherwise, so that the rows of one comparison are scored in one mode."""
    assert [cfg.parse_args(f).infer for f in (["-pcsw", "0"], ["-method", "supervised"], ["-method", "fixmatch"],
                                             ["-dfe", "0"], [])] == ["pcsw"] * 5
    assert cfg.parse_args(["-pcsw", "0", "-infer", "coarse"]).infer == "coarse"
    assert cfg.parse_args(["-student", "unet", "-method", "supervised"]).infer == "student"


@pytest.mark.parametrize("method", ["supervised", "fixmatch"])
@pytest.mark.parametrize("flag", ["-dfe", "-pcsw"])
def test_dfe_and_pcsw_are_refused_outside_sss(method, flag, capsys):
    """A baseline never trains with DFE or PCSW; asking for them is an error, not a silent override."""
    with pytest.raises(SystemExit) as e:
        cfg.parse_args(["-method", method, flag, "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert f"{flag} 1: DFE and PCSW are parts of SSS; -method {method} trains without them" in err
    off = cfg.parse_args(["-method", method, flag, "0"])
    assert (off.dfe, off.pcsw) == (False, False)
    sss = cfg.parse_args(["-method", "sss"])
    assert (sss.dfe, sss.pcsw) == (True, True)


def test_config_is_typed_and_frozen():
    import dataclasses
    c = cfg.to_config(cfg.parse_args(["-dataset", "demo"]), 3)
    assert c.model.num_classes == 3 and c.model.freeze_encoder and c.pcsw.tau == 0.8 and c.semi.method == "sss"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.run.max_iters = 1
