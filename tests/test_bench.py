"""bench/bench_train.py measures real 2D and 3D steps (tiny SAM-2 config, one timed step each)."""
import os
import sys

import pytest

from tests._model_fixtures import TEST_CFG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


@pytest.mark.parametrize("script", ["2d", "3d"])
def test_bench_train_splits_a_step_into_its_parts(script, tmp_path, capsys):
    import bench_train
    from dataset.demo import ensure_demo

    root = ensure_demo(str(tmp_path / f"demo_{script}"), "acdc" if script == "2d" else "bhsd", seed=0)
    flags = ["-dataset", "demo", "-data_path", root, "-sam_config", TEST_CFG, "-image_size", "64",
             "-video_length", "4", "-num_workers", "0", "-p_gt", "1", "-b", "2" if script == "2d" else "1"]
    assert bench_train.main(["--script", script, "--steps", "1", "--warmup", "0", "--methods", "sss", "--", *flags]) == 0
    out = capsys.readouterr().out
    r = bench_train.bench_method("supervised", flags, steps=1, warmup=0, script=script)
    assert r["step"] > 0 and r["parts"]["encoder"] > 0 and r["parts"]["head"] > 0 and r["parts"]["loss"] > 0
    if script == "3d":  # SAM-2 tracking of the prompted clip is timed as its own part; one clip per step
        assert r["parts"]["track"] > 0 and r["parts"]["decoder"] == 0 and r["clips"] == 1
        assert r["images"] == 4 and "s per training volume" in out
    else:
        assert r["parts"]["decoder"] > 0 and r["parts"]["track"] == 0 and r["images"] == 2
    assert "outside the model" in out and "images/s" in out
