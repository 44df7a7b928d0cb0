"""A checkpoint cannot make evaluate.py or -pretrain load an arbitrary yaml (hydra instantiates its
``_target_``s): only built-in sam2/sam2.1 names and the configs shipped in sam2_train/configs are accepted."""
import os

import pytest
import torch

from sam2_train.engine.checkpoint import CheckpointError
from sam2_train.engine.trusted_config import SHIPPED_DIR, trusted_sam_config
from sam2_train.model.build import SAM_CONFIG_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")


def test_trusted_names():
    assert trusted_sam_config("sam2_hiera_s", "ck") == "sam2_hiera_s"
    assert trusted_sam_config("sam2.1_hiera_b+.yaml", "ck") == "sam2.1_hiera_b+"
    assert trusted_sam_config("configs/sam2.1/sam2.1_hiera_l.yaml", "ck") == "configs/sam2.1/sam2.1_hiera_l.yaml"
    # a shipped config named by another checkout's path is loaded from this checkout
    assert trusted_sam_config("/elsewhere/sam2_train/configs/sam2_hiera_test.yaml", "ck") == \
        os.path.join(SHIPPED_DIR, "sam2_hiera_test.yaml")
    for bad in ("/tmp/x/my_model.yaml", "sam2_hiera_x", "", None, 3):
        with pytest.raises(CheckpointError, match="not a built-in config"):
            trusted_sam_config(bad, "ck")


def evil_checkpoint(tmp_path):
    """A checkpoint of this project's format whose config names a yaml that would create a file if built."""
    marker = tmp_path / "pwned"
    yaml = tmp_path / "evil.yaml"
    yaml.write_text(f"model:\n  _target_: pathlib.Path.touch\n  self: {marker}\n")
    import cfg
    config = cfg.parse_config(["-dataset", "demo", "-data_path", str(tmp_path / "none"), "-sam_config", str(yaml),
                               "-image_size", "64"], "2d")
    config = config.replace(model={"num_classes": 3}, data={"class_names": ("RV", "Myo", "LV")})
    assert config.model.sam_config == str(yaml)
    ckpt = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": config.to_dict(), "version": 1}, ckpt)
    return str(ckpt), str(yaml), marker


def test_evaluate_refuses_a_checkpoint_naming_a_yaml_path(tmp_path, capsys):
    import evaluate
    ckpt, yaml, marker = evil_checkpoint(tmp_path)
    assert evaluate.main(["-ckpt", ckpt, "-log_dir", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {ckpt} names SAM-2 config {yaml!r}, which is not a built-in config: a checkpoint may "
                   f"only name one of {', '.join(SAM_CONFIG_NAMES)} or a config shipped in "
                   f"sam2_train/configs (sam2_hiera_test.yaml); to use your own yaml, pass it on the command line"]
    assert not marker.exists() and not (tmp_path / "ev").exists()


def test_pretrain_refuses_a_checkpoint_naming_a_yaml_path(tmp_path, capsys):
    import run_training
    from dataset.demo import ensure_demo
    ckpt, yaml, marker = evil_checkpoint(tmp_path)
    root = ensure_demo(str(tmp_path / "demo_acdc"), "acdc")
    status = run_training.main(["-dataset", "demo", "-data_path", root, "-sam_config", TINY, "-image_size", "64",
                                "-b", "2", "-num_workers", "0", "-device", "cpu", "-max_iters", "1",
                                "-log_dir", str(tmp_path / "logs"), "-pretrain", ckpt], "2d")
    err = [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("error")]
    assert status == 2 and len(err) == 1 and err[0].startswith(f"error: {ckpt} names SAM-2 config {yaml!r}")
    assert not marker.exists() and not (tmp_path / "logs").exists()
