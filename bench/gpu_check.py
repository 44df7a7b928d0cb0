"""One command that runs every CUDA path of the repository and writes the speed and memory table.

    python bench/gpu_check.py                    # on a CUDA machine: the seed settings, < 8 min on one H100/H200
    python bench/gpu_check.py --dry-run          # the same sequence on CPU at a tiny size (CI)

The sequence (each item one row of the table; a failed item is marked FAIL and the run continues):

1. 20 steps of each 2D method (supervised / fixmatch / sss) at the seed settings (Hiera-S, 1024 px, ``-b 4``
   labeled + 4 unlabeled slices as one slab, image encoder trained) under bf16 autocast and in fp32;
2. the 2D sss step with ``-compile 1`` (the student's image encoder compiled);
3. 20 steps of the 3D sss method (one labeled and one unlabeled 8-frame clip, bf16);
4. the label-free evaluation of one 512x512x60 volume (bench/bench_eval_3d.py, every slice prompted, bf16);
5. exact resume: train k steps, checkpoint (through bytes, as on disk: weights, AdamW, EMA, RNG states of
   CPU and CUDA), train n more; rebuild, restore, train the same n: the n losses must agree and the CUDA
   random state must be the saved one;
6. with two or more GPUs: ``torchrun --nproc_per_node 2 train_2d.py`` (NCCL DDP) for a few iterations.

Weights: ``./checkpoints/sam2_hiera_small.pt`` when present, else random weights of the same shapes (the
speed and memory figures do not depend on the values). Data: the generated demo datasets (at 1024 px), or
``--data-2d`` / ``--data-3d`` (ACDC / BHSD layout). Timing and the split into parts come from
bench/bench_train.py (``bench_method``); every row reports the CUDA allocator peak
(``torch.cuda.max_memory_allocated``) of that item alone.

It prints the Markdown table and writes it to ``--out``. Exit status: 0 when every item passed; 1 when
any failed (an exception, e.g. a dtype or device mismatch, a non-finite loss, weights no longer fp32 on the
device after a step, or a resume mismatch). Without CUDA (and without ``--dry-run``) it says so in one line
and exits 0.
"""
from __future__ import annotations

import argparse
import gc
import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import bench_eval_3d  # noqa: E402
import bench_train  # noqa: E402

SEED_CKPT = os.path.join(ROOT, "checkpoints", "sam2_hiera_small.pt")
TINY_CFG = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")


def settings(dry_run: bool, data_2d: str, data_3d: str, steps: int | None, warmup: int | None) -> dict:
    """Flags and sizes of the sequence: the seed settings on CUDA, a tiny model on CPU for ``--dry-run``."""
    if dry_run:
        model = ["-sam_config", TINY_CFG, "-sam_ckpt", "none", "-image_size", "64", "-device", "cpu",
                 "-num_workers", "0"]
        return dict(model=model, flags_2d=model + ["-b", "2", "-b_u", "4", "-slab_len", "2"],
                    flags_3d=model + ["-b", "1", "-b_u", "1", "-video_length", "4"], eval_size=(64, 64, 4),
                    steps=steps or 1, warmup=0 if warmup is None else warmup, compile_backend="eager",
                    data_2d=data_2d, data_3d=data_3d, ddp_size="64")
    ckpt = SEED_CKPT if os.path.isfile(SEED_CKPT) else "none"
    model = ["-sam_config", "sam2_hiera_s", "-sam_ckpt", ckpt, "-image_size", "1024", "-device", "cuda",
             "-num_workers", str(min(8, os.cpu_count() or 1))]
    return dict(model=model, flags_2d=model + ["-b", "4", "-b_u", "4", "-slab_len", "4"],
                flags_3d=model + ["-b", "1", "-b_u", "1", "-video_length", "8"], eval_size=(512, 512, 60),
                steps=steps or 20, warmup=3 if warmup is None else warmup, compile_backend="inductor",
                data_2d=data_2d, data_3d=data_3d, ddp_size="256")


def data_flags(root: str) -> list[str]:
    """``-dataset`` / ``-data_path`` for a demo root made by ``ensure_demo`` or a real ACDC / BHSD tree."""
    name = os.path.basename(os.path.normpath(root)).lower()
    kind = "demo" if name.startswith("demo_") else ("acdc" if "acdc" in name else "bhsd")
    return ["-dataset", kind, "-data_path", root, "-encoder_lr_mult", "1"]


class Report:
    """Rows of the table plus pass/fail bookkeeping."""

    COLUMNS = (("check", "check"), ("setting", "setting"), ("dtype", "dtype"), ("s/step", "s_per_step"),
               ("images/s", "images_per_s"), ("s per training volume", "s_per_training_volume"),
               ("s per evaluated volume", "s_per_evaluated_volume"), ("peak CUDA memory (GiB)", "peak_gib"),
               ("outside the model", "outside"), ("speed-up", "speed_up"), ("result", "result"))

    def __init__(self, device: str):
        self.device, self.rows, self.failed = device, [], []

    def add(self, check: str, ok: bool = True, note: str = "", **cols) -> dict:
        row = dict(check=check, result="ok" if ok else f"FAIL: {note}" if note else "FAIL", **cols)
        if ok and note:
            row["result"] = f"ok ({note})"
        self.rows.append(row)
        if not ok:
            self.failed.append(check)
        print(f"[gpu_check] {check}: {row['result']}", flush=True)
        return row

    def markdown(self) -> str:
        lines = ["| " + " | ".join(t for t, _ in self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        for r in self.rows:
            lines.append("| " + " | ".join(_fmt(r.get(k, "")) for _, k in self.COLUMNS) + " |")
        return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if v < 100 else f"{v:.0f}"
    return str(v)


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_item(report: Report, check: str, fn, **cols):
    """Run one item; an exception marks it FAIL (with its one-line message) and the sequence goes on."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- every failure is reported, the exit status carries it
        traceback.print_exc()
        report.add(check, False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", **cols)
        return None


def train_row(report: Report, s: dict, check: str, method: str, script: str, extra: list[str]) -> dict | None:
    flags = (s["flags_2d"] + data_flags(s["data_2d"]) if script == "2d" else s["flags_3d"] + data_flags(s["data_3d"]))
    flags = flags + extra
    amp = "bf16" if "bf16" in extra else "fp32"

    def go():
        r = bench_train.bench_method(method, flags, s["steps"], s["warmup"], script,
                                     compile_backend=s["compile_backend"])
        ok = math.isfinite(r["loss"]) and r["weights_ok"]
        note = "" if ok else ("non-finite loss" if not math.isfinite(r["loss"]) else "weights not fp32 on the device")
        cols = dict(setting=r["setting"], dtype=amp + (" + compile" if "-compile" in extra else ""),
                    s_per_step=r["step"], outside=f"{100 * r['outside']:.1f} %",
                    peak_gib=r["peak_gib"] if r["peak_kind"].startswith("CUDA") else "–")
        if script == "2d":
            cols["images_per_s"] = r["images"] / r["step"]
        else:
            cols["s_per_training_volume"] = r["step"] / r["clips"]
        row = report.add(check, ok, note, **cols)
        row["step"] = r["step"]
        return row
    try:
        return run_item(report, check, go, dtype=amp)
    finally:
        _free(report.device)


def eval_row(report: Report, s: dict) -> None:
    flags = s["model"] + ["-amp", "bf16"]

    def go():
        r = bench_eval_3d.bench_volume(flags, s["eval_size"], classes=5)
        h, w, d = s["eval_size"]
        ok = r["shape"] == (d, h, w) and r["max_label"] <= 5
        report.add("3D evaluation, one volume, label-free", ok,
                   f"foreground {100 * r['foreground']:.1f} %" if ok else f"prediction of shape {r['shape']}, "
                   f"labels up to {r['max_label']}; expected {(d, h, w)}, labels 0..5",
                   setting=r["setting"], dtype="bf16", s_per_evaluated_volume=r["seconds"],
                   peak_gib=r["peak_gib"] if r["peak_gib"] is not None else "–")
    run_item(report, "3D evaluation, one volume, label-free", go, dtype="bf16")
    _free(report.device)


def _train_steps(su, start: int, n: int) -> list[float]:
    losses = []
    for i in range(start, start + n):
        bl, bu = su.next_batches()
        out = su.forward(bl, bu, i)
        su.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        su.update()
        losses.append(float(out["loss"].detach()))
    return losses


def resumed_losses(method: str, flags: list[str], script: str, k: int, n: int) -> tuple[list, list, bool]:
    """Losses of steps k+1..k+n of one run and of a run restored from its step-k checkpoint; and whether the
    restored CUDA random state equals the saved one (True on CPU)."""
    from sam2_train.engine.device import seed_everything
    from sam2_train.engine.sampling import InfiniteLoader
    from sam2_train.engine.checkpoint import gather_rng_states, make_checkpoint, restore_training_state

    def fresh(start: int):
        seed_everything(0)
        su = bench_train.setup(method, flags, script)
        su.it_l = InfiniteLoader(su.it_l.loader, start_iter=start)
        if su.it_u is not None:
            su.it_u = InfiniteLoader(su.it_u.loader, start_iter=start)
        return su

    su = fresh(0)
    _train_steps(su, 0, k)
    buf = io.BytesIO()
    torch.save(make_checkpoint(su.net, su.config.to_dict(), optimizer=su.opt, ema=su.ema, rng=gather_rng_states(),
                               iteration=k),
               buf)
    cuda_saved = torch.cuda.get_rng_state() if su.device.type == "cuda" else None
    first = _train_steps(su, k, n)
    del su
    su = fresh(k)
    buf.seek(0)
    restore_training_state(torch.load(buf, weights_only=False), su.net, optimizer=su.opt, ema=su.ema)
    rng_ok = cuda_saved is None or torch.equal(torch.cuda.get_rng_state(), cuda_saved)
    return first, _train_steps(su, k, n), rng_ok


def resume_row(report: Report, s: dict, tol: float) -> None:
    check = "resume from a checkpoint: next losses match"

    def go():
        flags = s["flags_2d"] + data_flags(s["data_2d"]) + ["-amp", "bf16"]
        a, b, rng_ok = resumed_losses("sss", flags, "2d", k=2, n=3)
        close = all(math.isclose(x, y, rel_tol=tol, abs_tol=1e-6) for x, y in zip(a, b))
        note = "losses " + ", ".join(f"{x:.5f}/{y:.5f}" for x, y in zip(a, b))
        if not rng_ok:
            note = "CUDA random state not restored; " + note
        report.add(check, close and rng_ok, note, setting="2D sss, 2 steps, checkpoint, 3 steps", dtype="bf16")
    run_item(report, check, go, dtype="bf16")
    _free(report.device)


def ddp_row(report: Report, s: dict) -> None:
    check = "DDP, 2 processes (NCCL)"
    if report.device != "cuda" or torch.cuda.device_count() < 2:
        report.add(check, True,
                   f"skipped: {torch.cuda.device_count() if report.device == 'cuda' else 0} GPU(s) visible",
                   setting="torchrun --nproc_per_node 2 train_2d.py")
        return
    log_dir = tempfile.mkdtemp(prefix="gpu_check_ddp_")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", os.path.join(ROOT, "train_2d.py"),
           *data_flags(s["data_2d"]), "-sam_config", "sam2_hiera_s", "-sam_ckpt", "none", "-image_size",
           s["ddp_size"], "-b", "2", "-b_u", "4", "-max_iters", "4", "-val_volumes", "1", "-log_dir", log_dir,
           "-distributed", "ddp", "-num_workers", "2"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    ok = r.returncode == 0 and "world size 2" in out
    report.add(check, ok, f"{time.perf_counter() - t0:.0f} s" if ok else out.strip().splitlines()[-1][:200],
               setting="torchrun --nproc_per_node 2 train_2d.py, 4 iterations, 256 px", dtype="bf16")
    shutil.rmtree(log_dir, ignore_errors=True)


def ratios(report: Report, by: dict) -> None:
    """Fill the speed-up column: bf16 over fp32 per method, compiled over eager."""
    for m in ("supervised", "fixmatch", "sss"):
        bf, fp = by.get(("2d", m, "bf16")), by.get(("2d", m, "fp32"))
        if bf and fp:
            bf["speed_up"] = f"bf16/fp32 x{fp['step'] / bf['step']:.2f}"
    comp, eager = by.get(("2d", "sss", "compile")), by.get(("2d", "sss", "bf16"))
    if comp and eager:
        comp["speed_up"] = f"compile x{eager['step'] / comp['step']:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="run the sequence on CPU at a tiny size (no CUDA needed)")
    p.add_argument("--out", default="gpu_check.md", help="where to write the Markdown table")
    p.add_argument("--steps", type=int, default=None, help="timed steps per training item (20; dry run 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (3; dry run 0)")
    p.add_argument("--data-2d", default=None, help="ACDC-layout data (default: the generated demo)")
    p.add_argument("--data-3d", default=None, help="BHSD-layout data (default: the generated demo)")
    p.add_argument("--resume-tol", type=float, default=None,
                   help="relative tolerance of the resumed losses (default 1e-3 on CUDA, 1e-5 on CPU)")
    opts = p.parse_args(argv)
    if not opts.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "nothing to check here (python bench/gpu_check.py --dry-run runs the sequence on CPU)")
        return 0
    warnings.filterwarnings("ignore", message=".*RANDOMLY INITIALISED.*")
    from dataset.demo import ensure_demo

    tmp = tempfile.mkdtemp(prefix="gpu_check_")
    t_start = time.perf_counter()
    try:
        data_2d = opts.data_2d or ensure_demo(os.path.join(tmp, "demo_acdc"), "acdc", seed=0)
        data_3d = opts.data_3d or ensure_demo(os.path.join(tmp, "demo_bhsd"), "bhsd", seed=0)
        s = settings(opts.dry_run, data_2d, data_3d, opts.steps, opts.warmup)
        device = "cpu" if opts.dry_run else "cuda"
        name = "CPU (dry run, tiny model)" if opts.dry_run else torch.cuda.get_device_name(0)
        report = Report(device)
        by = {}
        for m in ("supervised", "fixmatch", "sss"):
            for amp in ("bf16", "fp32"):
                by[("2d", m, amp)] = train_row(report, s, f"2D {m}", m, "2d",
                                               ["-amp", "bf16" if amp == "bf16" else "off"])
        by[("2d", "sss", "compile")] = train_row(report, s, "2D sss, -compile 1", "sss", "2d",
                                                 ["-amp", "bf16", "-compile", "1"])
        by[("3d", "sss", "bf16")] = train_row(report, s, "3D sss", "sss", "3d", ["-amp", "bf16"])
        eval_row(report, s)
        resume_row(report, s, opts.resume_tol or (1e-5 if opts.dry_run else 1e-3))
        ddp_row(report, s)
        ratios(report, by)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    weights = "SAM-2 Hiera-S checkpoint" if not opts.dry_run and os.path.isfile(SEED_CKPT) else "random weights"
    header = (f"`python bench/gpu_check.py{' --dry-run' if opts.dry_run else ''}` on {name}, torch {torch.__version__}"
              f", {weights}, {s['steps']} timed steps after {s['warmup']} warm-up steps per training row, "
              f"{time.perf_counter() - t_start:.0f} s in all")
    text = header + "\n\n" + report.markdown() + "\n"
    print("\n" + text)
    with open(opts.out, "w") as f:
        f.write(text)
    if report.failed:
        print(f"gpu_check: FAILED: {', '.join(report.failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
