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
