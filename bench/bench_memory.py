"""Memory of one training step with and without ``-grad_ckpt 1``, each in its own process.

    python bench/bench_memory.py -- -dataset demo -data_path ./data/demo_acdc -sam_config sam2_hiera_s \
        -image_size 1024 -b 1 -b_u 4 -encoder_lr_mult 1 -num_workers 0            # Hiera-S 1024 px, CPU fp32
    python bench/bench_memory.py --script 3d -- -dataset demo -data_path ./data/demo_bhsd ...

Everything after ``--`` is a train_2d.py / train_3d.py flag. For each ``--methods`` entry and each of
``-grad_ckpt 0/1`` a fresh process builds the model, optimiser and EMA teacher as the trainer does, draws
one batch, then runs one step (forward, backward, optimiser, EMA) and reports:

- ``peak RSS``: the process's peak resident memory (``ru_maxrss``) after the step, and the resident memory
  just before it (weights, EMA, data): on CPU this is the measured proxy for GPU memory;
- ``saved``: the bytes autocast/autograd keeps for backward during the forward (counted by
  ``torch.autograd.graph.saved_tensors_hooks``, each storage once; a checkpointed block keeps only its input);
- ``static``: weights + EMA copy + gradients + two AdamW moments, from the parameter counts (fp32).

It then prints a Markdown table and, from these measured figures, an **estimate** of the CUDA peak of
the same step at ``--estimate-b`` labeled images (2D) / clips (3D) under bf16 autocast:
``static + bf16_ratio * (b * saved_supervised_1 + (saved_semi_1 - saved_supervised_1)) * 1.2`` (the labeled
part scales with b, the unlabeled batch stays as given; ``bf16_ratio`` = saved bytes under bf16 over fp32,
``--bf16-ratio``; 1.2 = allowance for backward workspace and allocator slack).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def current_rss() -> int:
    """Resident bytes of this process now (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class SavedBytes:
    """Context manager counting the bytes autograd saves for backward (each storage once)."""

    def __init__(self):
        self.bytes, self.count, self._seen = 0, 0, set()

    def _pack(self, t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.device.type)
        if key not in self._seen:
            self._seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
            self.count += 1
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def measure_step(method: str, flags: list[str], script: str) -> dict:
    """One training step in this process: peak RSS, RSS before, saved bytes, parameter counts, seconds."""
    import bench_train

    su = bench_train.setup(method, flags, script)
    batch_l, batch_u = su.next_batches()
    gc.collect()
    rss_before = current_rss()
    t0 = time.perf_counter()
    with SavedBytes() as saved:
        out = su.forward(batch_l, batch_u, 0)
    su.opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    su.update()
    if su.device.type == "cuda":
        torch.cuda.synchronize(su.device)
    dt = time.perf_counter() - t0
    params = sum(p.numel() for p in su.net.parameters())
    trained = sum(p.numel() for p in su.net.parameters() if p.requires_grad)
    model, run = su.config.model, su.config.run
    return dict(method=method, grad_ckpt=int(model.grad_ckpt), seconds=dt, rss_before=rss_before,
                peak_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, saved_bytes=saved.bytes,
                saved_count=saved.count, params=params, trained=trained, ema=su.ema is not None,
                amp=str(run.amp), setting=f"{model.sam_config} @ {model.image_size}px, b={run.batch_size}"
                + (f" + {su.unlabeled_batch} unlabeled item(s)" if su.semi else ""))


def static_bytes(r: dict) -> int:
    """fp32 weights + EMA copy + gradients + two AdamW moments of the trained parameters."""
    return 4 * r["params"] * (2 if r["ema"] else 1) + 12 * r["trained"]


def run_child(method: str, grad_ckpt: int, script: str, flags: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--script", script, "--",
           *flags, "-grad_ckpt", str(grad_ckpt)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def table(rows: list[dict]) -> str:
    lines = ["| method | -grad_ckpt | step (s) | peak RSS (GiB) | RSS before the step (GiB) | step's RSS rise (GiB) "
             "| saved for backward (GiB) | tensors saved |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['grad_ckpt']} | {r['seconds']:.1f} | {gib(r['peak_rss'])} | "
                     f"{gib(r['rss_before'])} | {gib(r['peak_rss'] - r['rss_before'])} | {gib(r['saved_bytes'])} | "
                     f"{r['saved_count']} |")
    return "\n".join(lines)


def estimate(rows: list[dict], b: int, bf16_ratio: float) -> list[str]:
    """Estimated bf16 CUDA peak (GiB) at ``b`` labeled items, per grad_ckpt, from the measured rows."""
    out = []
    for ck in (0, 1):
        by = {r["method"]: r for r in rows if r["grad_ckpt"] == ck}
        if "supervised" not in by:
            continue
        sup = by["supervised"]
        for m, r in by.items():
            act = b * sup["saved_bytes"] + (r["saved_bytes"] - sup["saved_bytes"])
            est = static_bytes(r) + bf16_ratio * act * 1.2
            out.append(f"| {m} | {ck} | {gib(static_bytes(r))} | {gib(act)} | {gib(est)} |")
    return ["| method | -grad_ckpt | static fp32 (GiB) | saved fp32 at b (GiB) | estimated bf16 CUDA peak (GiB) |",
            "|---|---|---|---|---|", *out] if out else []


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--script", choices=["2d", "3d"], default="2d")
    p.add_argument("--methods", nargs="+", default=["supervised", "sss"], choices=["supervised", "fixmatch", "sss"])
    p.add_argument("--estimate-b", type=int, default=4, help="labeled batch of the bf16 CUDA estimate")
    p.add_argument("--bf16-ratio", type=float, default=0.5, help="saved bytes under bf16 / under fp32")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    opts = p.parse_args(own)
    warnings.filterwarnings("ignore", message=".*RANDOMLY INITIALISED.*")
    if opts.child:
        print(json.dumps(measure_step(opts.child, flags, opts.script)))
        return 0
    rows = [run_child(m, ck, opts.script, flags, opts.timeout) for m in opts.methods for ck in (0, 1)]
    print(f"one training step, {rows[0]['setting']}, {torch.get_num_threads()} threads, measured:")
    print(table(rows))
    est = estimate(rows, opts.estimate_b, opts.bf16_ratio)
    if est:
        print(f"\nestimated (not measured) bf16 CUDA peak at -b {opts.estimate_b}, bf16/fp32 saved-bytes ratio "
              f"{opts.bf16_ratio}:")
        print("\n".join(est))
    print("\n" + json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
