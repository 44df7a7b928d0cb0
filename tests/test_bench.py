"""bench/bench_train.py measures real 2D and 3D steps (tiny SAM-2 config, one timed step each)."""
import glob
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
    assert bench_train.main(["--script", script, "--steps", "1", "--warmup", "0", "--methods", "sss", "--",
                             *flags]) == 0
    out = capsys.readouterr().out
    # 3D: clips over a lesion (one of the seven demo training volumes is healthy), so SAM-2 tracks
    r = bench_train.bench_method("supervised", flags + (["-fg_oversample", "1"] if script == "3d" else []), steps=3,
                                 warmup=0, script=script)
    assert r["step"] > 0 and r["parts"]["encoder"] > 0 and r["parts"]["head"] > 0 and r["parts"]["loss"] > 0
    if script == "3d":  # SAM-2 tracking of the prompted clip is timed as its own part; one clip per step
        assert r["parts"]["track"] > 0 and r["parts"]["decoder"] == 0 and r["clips"] == 1
        assert r["images"] == 4 and "s per training volume" in out
    else:
        assert r["parts"]["decoder"] > 0 and r["parts"]["track"] == 0 and r["images"] == 2
    assert "outside the model" in out and "images/s" in out


def test_gpu_check_without_cuda_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    import gpu_check
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "CUDA is not available" in out and not (tmp_path / "t.md").exists()


def test_gpu_check_dry_run_runs_the_whole_sequence(tmp_path, capsys):
    """The CUDA sequence on CPU at a tiny size: every item runs and passes, one table is written."""
    import gpu_check
    out = tmp_path / "gpu_check.md"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    checks = [r.split(" | ")[0][2:] for r in rows]
    assert checks == ["2D supervised"] * 2 + ["2D fixmatch"] * 2 + ["2D sss"] * 2 + [
        "2D sss, -compile 1", "3D sss", "3D evaluation, one volume, label-free",
        "resume from a checkpoint: next losses match", "DDP, 2 processes (NCCL)"]
    assert all(r.rstrip(" |").split(" | ")[-1].startswith("ok") for r in rows), table
    assert "bf16/fp32 x" in table and "compile x" in table and "skipped: 0 GPU(s)" in table
    assert "s/step" in table and "images/s" in table and "s per training volume" in table
    assert "FAIL" not in capsys.readouterr().err


def test_gpu_check_fails_on_errors_and_resume_mismatch(monkeypatch, tmp_path):
    """A dtype error in a step, a failed evaluation and diverging resumed losses each mark their row FAIL
    and make the exit status non-zero; the table is still written."""
    import gpu_check

    def dtype_error(*a, **k):
        raise RuntimeError("expected scalar type Float but found BFloat16")
    monkeypatch.setattr(gpu_check.bench_train, "bench_method", dtype_error)
    monkeypatch.setattr(gpu_check.bench_eval_3d, "bench_volume", dtype_error)
    monkeypatch.setattr(gpu_check, "resumed_losses", lambda *a, **k: ([1.0, 2.0], [1.0, 2.5], True))
    out = tmp_path / "gpu_check.md"
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 1
    table = out.read_text()
    assert table.count("FAIL: RuntimeError: expected scalar type Float but found BFloat16") == 9
    assert "FAIL: losses 1.00000/1.00000, 2.00000/2.50000" in table


def test_bench_rss_resamples_the_demo_phantoms_to_the_asked_depth(tmp_path):
    """The RSS benchmark's data: D slices per volume, the slab spacing scaled so the volume keeps its extent,
    labels resampled with the images, a custom root the data check accepts."""
    import nibabel as nib
    import numpy as np

    from bench_rss import resampled_dataset
    from dataset.demo import ensure_demo
    demo = ensure_demo(str(tmp_path / "demo_bhsd"), "bhsd", seed=0)
    root = resampled_dataset(str(tmp_path), 40, demo, labeled=2, unlabeled=1)
    img = nib.load(os.path.join(root, "imagesTr", "case0.nii.gz"))
    lab = nib.load(os.path.join(root, "labelsTr", "case0.nii.gz"))
    src = nib.load(sorted(glob.glob(os.path.join(demo, "label_192", "images", "*.nii.gz")))[0])
    assert img.shape == lab.shape == src.shape[:2] + (40,)
    extent = lambda im: np.linalg.norm(im.affine[:3, 2]) * im.shape[2]  # noqa: E731
    assert extent(img) == pytest.approx(extent(src), rel=1e-5)
    assert os.path.isfile(os.path.join(root, "imagesUnlabeled", "case2.nii.gz"))
    assert np.asanyarray(lab.dataobj).max() > 0
