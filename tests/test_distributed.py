"""train_2d.py under torchrun: 2 CPU processes, gloo, DDP.

Design of the check (no test hook in production code). A probe script, written by the test, runs the real
``run_training.main`` for 2D under ``torch.distributed.run --nproc_per_node 2``; it only
wraps two methods from the outside: the trainer's step (to record each rank's losses) and its
``final_evaluation`` (called on every rank after the last step, to dump each rank's student and EMA weights).
The DDP invariant is then checked where it matters:

* the ranks trained on different data (their loss sequences differ: per-rank shards and seeds), yet end
  with bit-identical student weights and EMA teachers -> gradients were averaged across ranks every step;
* the weights moved away from the initial ones -> optimiser steps happened;
* rank 0's ``last.pt`` (written by rank 0 alone; ``-save_freq 1`` makes the collective RNG gather run
  every step) holds exactly those weights, one RNG state per rank, and the right iteration;
* rank-0-only outputs: one run directory, validation and summary.json written once; both processes exit 0
  (no deadlock at the validation barrier or in the checkpoint gather).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.test_train_2d import run_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")

PROBE = textwrap.dedent("""
    import os, sys
    import torch
    sys.path.insert(0, {root!r})
    import run_training
    from sam2_train.engine.trainer import Trainer

    out_dir = {out!r}
    rank = int(os.environ["RANK"])
    losses, init = [], {{}}
    train_step, final = Trainer.train_step, Trainer.final_evaluation

    def recording_step(self, it):
        if not init:
            init.update({{k: v.detach().clone() for k, v in self.net.state_dict().items()}})
        out = train_step(self, it)
        losses.append(float(out["loss"].detach()))
        return out

    def dumping_final(self):
        torch.save({{"model": {{k: v.detach().clone() for k, v in self.net.state_dict().items()}},
                    "ema": {{k: v.detach().clone() for k, v in self.ema.module.state_dict().items()}},
                    "init": init, "losses": losses}}, os.path.join(out_dir, f"rank{{rank}}.pt"))
        return final(self)

    Trainer.train_step, Trainer.final_evaluation = recording_step, dumping_final
    sys.exit(run_training.main(sys.argv[1:], "2d"))
""")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from dataset.demo import ensure_demo
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "demo_acdc"), "acdc", seed=0)


def test_two_process_ddp_ranks_stay_identical(demo_root, tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE.format(root=ROOT, out=str(tmp_path)))
    log_dir = tmp_path / "logs"
    iters = 3
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(probe), "-dataset", "demo", "-data_path", demo_root, "-sam_config", TINY,
                        "-image_size", "64", "-b", "2", "-b_u", "4", "-slab_len", "2", "-num_workers", "0",
                        "-device", "cpu", "-log_dir", str(log_dir), "-max_iters", str(iters), "-log_freq", "1",
                        "-val_volumes", "1", "-save_freq", "1", "-val_freq", "1000"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "world size 2" in r.stdout + r.stderr

    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1)]
    assert len(ranks[0]["losses"]) == len(ranks[1]["losses"]) == iters
    assert ranks[0]["losses"] != ranks[1]["losses"], "both ranks saw the same data"
    init = ranks[0]["init"]
    moved = [k for k, v in ranks[0]["model"].items() if v.is_floating_point() and not torch.equal(v, init[k])]
    assert len(moved) > 50, "the optimiser did not change the weights"
    for part in ("model", "ema"):
        a, b = ranks[0][part], ranks[1][part]
        assert a.keys() == b.keys()
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        assert not diff, f"{part}: ranks differ in {diff[:5]}"

    (run,) = run_dirs(str(log_dir))                                   # rank 0 alone made a run directory
    ckpt = torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=True)
    assert ckpt["iteration"] == iters and len(ckpt["rng"]["per_rank"]) == 2
    assert not torch.equal(ckpt["rng"]["per_rank"][0]["torch"], ckpt["rng"]["per_rank"][1]["torch"])  # per-rank seeds
    for k, v in ranks[1]["model"].items():
        assert torch.equal(ckpt["model"][k], v), k
    assert ckpt["config"]["run"]["batch_size"] == 2  # per-process batch (-b)
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["split"] == "test"
    with open(os.path.join(run, "metrics.csv")) as f:
        assert len(f.read().strip().splitlines()) == 2  # header + the one validation, written once
