"""Resume safety and the non-finite weight guard, end to end through train_2d.py (tiny SAM-2 config, CPU,
64 px, demo data): a changed flag is refused naming it, ``-resume_force 1`` records the change, a
checkpoint of another world size is explained, a locked run directory is refused, and a step that makes the
weights non-finite stops the run before any checkpoint holds them."""
import json
import os

import pytest
import torch

from tests.test_train_2d import base_args, run_dirs, run_train


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from dataset.demo import ensure_demo
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "demo_acdc"), "acdc", seed=0)


def supervised(root, log_dir, iters, *extra):
    return base_args(root, log_dir, iters, "-method", "supervised", "-val_freq", "1000", "-save_freq", "1", *extra)


@pytest.fixture(scope="module")
def short_run(demo_root, tmp_path_factory):
    """A finished 1-iteration supervised run whose last.pt claims to come from 2 processes."""
    log_dir = tmp_path_factory.mktemp("logs")
    r = run_train(supervised(demo_root, log_dir, 1))
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(log_dir)
    ckpt = os.path.join(run, "checkpoints", "last.pt")
    state = torch.load(ckpt, weights_only=True)
    assert state["world_size"] == 1 and state["iteration"] == 1
    state["world_size"] = 2
    state["rng"]["per_rank"] = state["rng"]["per_rank"] * 2
    torch.save(state, ckpt)
    return run, ckpt


def test_resume_with_changed_flags_is_refused_naming_them(short_run, demo_root, tmp_path):
    run, ckpt = short_run
    r = run_train(["-resume", ckpt, *supervised(demo_root, tmp_path, 2, "-seed", "3", "-b", "3")])
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for part in ("-max_iters: 1 -> 2", "-seed: 0 -> 3", "-b: 2 -> 3", "-resume_force 1"):
        assert part in errors[0], errors[0]
    assert "resumed" not in json.load(open(os.path.join(run, "config.json")))


def test_resume_force_records_changes_and_explains_world_size(short_run, demo_root, tmp_path):
    from sam2_train.engine.run_dir import RunLock
    run, ckpt = short_run
    args = ["-resume", ckpt, "-resume_force", "1", *supervised(demo_root, tmp_path, 2)]
    lock = RunLock(run)  # another process (here: this test) is using the run directory
    try:
        r = run_train(args)
    finally:
        lock.release()
    assert r.returncode == 2
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"in use by process {os.getpid()}" in errors[0], r.stderr[-3000:]

    r = run_train(args)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "continuing with changed settings: -max_iters: 1 -> 2" in out   # as the refusal lists it
    assert f"{ckpt} was saved by 2 process(es), this run has 1" in out and "shard" in out
    cfg = json.load(open(os.path.join(run, "config.json")))
    assert cfg["run"]["max_iters"] == 1  # the original run's values stay
    (entry,) = cfg["resumed"]
    assert entry["changed"] == {"-max_iters": [1, 2]} and entry["iteration"] == 1
    assert entry["world_size"] == [2, 1] and entry["checkpoint"] == os.path.abspath(ckpt)
    assert torch.load(ckpt, weights_only=True)["iteration"] == 2
    assert not os.path.exists(os.path.join(run, "run.lock"))  # released at the end


def test_a_step_making_weights_non_finite_never_reaches_a_checkpoint(demo_root, tmp_path):
    # -lr 1e39: the first step's loss and gradients are finite, its Adam update overflows float32. last.pt
    # is due after every step (-save_freq 1): the guard must stop the run before writing it.
    r = run_train(supervised(demo_root, tmp_path, 3, "-lr", "1e39"))
    assert r.returncode == 3, (r.stdout + r.stderr)[-3000:]
    errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "non-finite weights after the update of iteration 1" in errors[0], errors
    (run,) = run_dirs(tmp_path)
    assert os.listdir(os.path.join(run, "checkpoints")) == []
