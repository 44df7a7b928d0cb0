"""Faults, end to end through the training scripts (tiny SAM-2 config, CPU, 64 px, demo data):

* train_3d.py killed with SIGKILL after its first checkpoint and restarted with ``-resume`` continues from
  that checkpoint and logs the same losses as an uninterrupted run (the 2D twin is
  tests/test_train_2d.py::test_kill9_and_resume_continue_exactly);
* a diverging run (``-lr 1e30``: the first step is finite, the next losses are not) skips each non-finite
  step with a warning, stops after ``-max_bad_steps`` in a row with exit status 3 and one error line, and
  the checkpoints written before (best.pt from a validation, last.pt) load and hold finite weights.
"""
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.test_train_2d import kill_after_first_checkpoint, run_dirs, scalar_series

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")
ENV = dict(os.environ, PYTHONWARNINGS="default", OMP_NUM_THREADS="2")


def run_script(script, args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def bhsd_root(tmp_path_factory):
    from dataset.demo import ensure_demo
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "demo_bhsd"), "bhsd", seed=0)


@pytest.fixture(scope="module")
def acdc_root(tmp_path_factory):
    from dataset.demo import ensure_demo
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "demo_acdc"), "acdc", seed=0)


def args_3d(root, log_dir, iters=4):
    return ["-dataset", "demo", "-data_path", root, "-sam_config", TINY, "-image_size", "64", "-video_length", "4",
            "-num_workers", "0", "-device", "cpu", "-log_dir", str(log_dir), "-max_iters", str(iters),
            "-log_freq", "1", "-val_volumes", "1", "-save_freq", "2", "-val_freq", "1000"]


def test_train_3d_kill9_and_resume_continue_exactly(bhsd_root, tmp_path):
    ref_dir = tmp_path / "ref"
    r = run_script("train_3d.py", args_3d(bhsd_root, ref_dir))
    assert r.returncode == 0, r.stderr[-3000:]
    reference = scalar_series(run_dirs(ref_dir)[0])
    assert sorted(reference) == [1, 2, 3, 4]

    log_dir = tmp_path / "logs"
    ckpt, returncode = kill_after_first_checkpoint("train_3d.py", args_3d(bhsd_root, log_dir), log_dir, env=ENV)
    assert ckpt is not None, "no checkpoint appeared before the run ended"
    assert returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert torch.load(ckpt, weights_only=True)["iteration"] == 2
    run = os.path.dirname(os.path.dirname(ckpt))
    assert not os.path.exists(os.path.join(run, "summary.json"))

    r = run_script("train_3d.py", ["-resume", ckpt, *args_3d(bhsd_root, log_dir)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {ckpt} at iteration 2/4" in r.stdout + r.stderr
    assert run_dirs(log_dir) == [run]  # same run directory, no new one
    resumed = scalar_series(run)
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (step, resumed, reference)
    assert torch.load(ckpt, weights_only=True)["iteration"] == 4
    assert os.path.isfile(os.path.join(run, "summary.json"))


def _finite_weights(path):
    state = torch.load(path, weights_only=True)
    tensors = [v for v in state["model"].values() if v.is_floating_point()]
    return state, all(bool(torch.isfinite(v).all()) for v in tensors)


def test_non_finite_losses_skip_then_stop_keeping_good_checkpoints(acdc_root, tmp_path):
    # One labeled case (17 slices) in one batch of 17; -val_every 1 validates (and writes best.pt) after every
    # step. Step 1 (lr 1e30) is finite and blows the weights up; steps 2 and 3
    # give non-finite losses: skipped with a warning, then the run stops.
    log_dir = tmp_path / "logs"
    r = run_script("train_2d.py", ["-dataset", "demo", "-data_path", acdc_root, "-sam_config", TINY,
                                   "-image_size", "64", "-method", "supervised", "-labeled_num", "1", "-b", "17",
                                   "-num_workers", "0", "-device", "cpu", "-log_dir", str(log_dir),
                                   "-max_iters", "10", "-log_freq", "1", "-val_volumes", "1", "-val_every", "1",
                                   "-save_freq", "1", "-lr", "1e30", "-max_bad_steps", "2"])
    out = r.stdout + r.stderr
    assert r.returncode == 3, out[-3000:]
    assert "non-finite loss at iteration 2: step skipped (1/2 in a row)" in out
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert errors == ["error: non-finite loss at iteration 3: 2 in a row (-max_bad_steps 2); training diverged, "
                      "the last good checkpoint is kept"], out[-3000:]
    assert "Traceback" not in out
    (run,) = run_dirs(log_dir)
    assert not os.path.exists(os.path.join(run, "summary.json"))  # an aborted run is not "finished"
    best, ok = _finite_weights(os.path.join(run, "checkpoints", "best.pt"))
    assert ok and best["iteration"] == 1
    last, ok = _finite_weights(os.path.join(run, "checkpoints", "last.pt"))
    # last.pt comes after the skipped step: the weights are those of the last applied step (best.pt's), and
    # the guard's count is saved so that a resumed run keeps counting.
    assert ok and last["iteration"] == 2 and last["guard"]["bad_in_row"] == 1
    for k, v in best["model"].items():
        assert torch.equal(v, last["model"][k]), k
    losses = scalar_series(run)
    assert torch.isfinite(torch.tensor(losses[1])) and not torch.isfinite(torch.tensor(losses[2]))
