"""Time one training step of each method and split it into its parts, measured in one run.

    python bench/bench_train.py                                   # 2D demo data, Hiera-T @ 128 px, CPU or GPU
    python bench/bench_train.py --steps 10 -- -dataset acdc -data_path ./data/ACDC -sam_config sam2_hiera_s \
        -sam_ckpt ./checkpoints/sam2_hiera_small.pt -image_size 1024 -b 4 -b_u 4     # the paper settings (GPU)
    python bench/bench_train.py --script 3d -- -dataset bhsd -data_path ./data/bhsd -sam_config sam2_hiera_s \
        -sam_ckpt ./checkpoints/sam2_hiera_small.pt -image_size 1024      # 3D seed settings: 8-slice clips (GPU)

Everything after ``--`` is a train_2d.py / train_3d.py flag (cfg.py; ``--script`` picks which). For each
method it runs ``--warmup`` untimed steps then ``--steps`` timed ones and prints, per step: data loading,
image encoder, DFE, coarse head, PCSW, prompt encoder + mask decoder (2D), SAM-2 tracking through the clip
(3D: memory attention, decoder, memory encoder), losses, backward, optimiser + EMA, and the rest (Python
glue), each as seconds and as a share of the step; the share spent outside the model (data + PCSW + glue);
images/s (labeled + unlabeled; 3D: slices, and seconds per training volume = per clip); and peak memory
(CUDA allocator peak on a GPU, process peak RSS on CPU). The step time includes waiting for the DataLoader
(the real loaders of the trainer: persistent workers, prefetching across epochs); ``--in-memory 1`` (default)
then times as many steps again on batches drawn into memory beforehand, so the two per-step times show what
the loader costs (pass ``--steps`` > batches per epoch to include epoch boundaries).
Part times come from the ``sss.*`` ``record_function`` scopes of the model code (GPU time on CUDA).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cfg  # noqa: E402
from dataset import build_datasets  # noqa: E402
from sam2_train.engine.config import TrainConfig  # noqa: E402
from sam2_train.engine.device import amp_dtype, select_device
from sam2_train.engine.device import autocast as autocast_ctx  # noqa: E402
from sam2_train.engine.distributed import DistInfo  # noqa: E402
from sam2_train.engine.ema import ModelEMA  # noqa: E402
from sam2_train.engine.sampling import InfiniteLoader, ResumableSampler, make_loader, _worker_init  # noqa: E402
from sam2_train.engine.schedule import build_optimizer  # noqa: E402
from sam2_train.engine.trainer import _to  # noqa: E402
from sam2_train.methods.networks import network  # noqa: E402
from sam2_train.methods.registry import method_class  # noqa: E402
from sam2_train.model.levers import compile_encoders  # noqa: E402

PARTS = ("encoder", "dfe", "head", "pcsw", "decoder", "track", "loss")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scope_times(prof, device) -> dict:
    """Seconds per ``sss.<part>`` scope over the profiled steps (device time on CUDA)."""
    out = dict.fromkeys(PARTS, 0.0)
    for e in prof.key_averages():
        if e.key.startswith("sss."):
            part = e.key[4:]
            us = getattr(e, "device_time_total", 0.0) if device.type == "cuda" else e.cpu_time_total
            if part in out:
                out[part] += us / 1e6
    return out


@dataclass
class Setup:
    """Everything one training step needs (built as ``sam2_train.trainer`` builds it)."""
    config: TrainConfig         # the typed settings the trainer uses (cfg.parse_config + cfg.with_data)
    device: torch.device
    net: torch.nn.Module
    student: torch.nn.Module
    teacher: torch.nn.Module
    ema: ModelEMA | None
    opt: torch.optim.Optimizer
    it_l: InfiniteLoader
    it_u: InfiniteLoader | None
    autocast: object

    @property
    def semi(self) -> bool:
        return self.it_u is not None

    def next_batches(self) -> tuple[dict, dict | None]:
        """The next labeled and unlabeled batches on the device."""
        return _to(next(self.it_l), self.device), (_to(next(self.it_u), self.device) if self.semi else None)

    @property
    def unlabeled_batch(self) -> int:
        return method_class(self.config.semi.method, self.config.model.student,
                            self.config.run.script).unlabeled_items(self.config)

    def forward(self, batch_l: dict, batch_u: dict | None, iteration: int) -> dict:
        return self.student(batch_l, batch_u, iteration)

    def update(self) -> None:
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.net)


def per_epoch_loader(ds, batch_size: int, *, seed: int, num_workers: int, dist) -> DataLoader:
    """For comparison only: a loader whose workers are restarted at every epoch (a fresh iterator per epoch,
    no persistent workers), as training loaders were built before the endless sampler."""
    sampler = ResumableSampler(len(ds), batch_size=batch_size, seed=seed, rank=dist.rank,
                                       world_size=dist.world_size, drop_last=True)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                      pin_memory=torch.cuda.is_available(), generator=torch.Generator(), persistent_workers=False,
                      worker_init_fn=_worker_init)


def setup(method: str, flags: list[str], script: str = "2d", compile_backend: str = "inductor",
          restart_workers: bool = False) -> Setup:
    """Model, EMA teacher, optimiser and loaders of ``train_2d.py`` / ``train_3d.py`` ``flags -method method``
    (one process; ``-compile 1`` compiles the student's encoder after the EMA copy, as the trainer does, with
    ``compile_backend``). ``restart_workers``: the per-epoch loader of :func:`per_epoch_loader` instead."""
    config = cfg.parse_config(flags + ["-method", method, "-distributed", "none"], script=script)
    run = config.run
    klass = method_class(method, config.model.student, script)
    device = select_device(run.device, run.gpu_device)
    autocast = lambda: autocast_ctx(device, run.amp)  # noqa: E731
    splits = build_datasets(config.data, script, image_size=config.model.image_size, seed=run.seed,
                            unlabeled=klass.needs_unlabeled)
    config = cfg.with_data(config, splits)
    dist = DistInfo(rank=0, local_rank=0, world_size=1, is_main=True, device=device)
    net = network(config.model.student).build(config.model, device=device)
    ema = ModelEMA(net, run.ema) if run.ema > 0 else None
    teacher = ema.module if ema is not None and klass.needs_unlabeled else net
    student = klass(net, config, teacher=teacher, autocast=autocast).to(device)
    if run.compile:
        compile_encoders(net, backend=compile_backend)
    opt = build_optimizer(net, config.optim)
    make = per_epoch_loader if restart_workers else make_loader
    loader = lambda ds, b: make(ds, b, seed=run.seed, num_workers=run.num_workers, dist=dist)  # noqa: E731
    it_l = InfiniteLoader(loader(splits.labeled, run.batch_size))
    it_u = InfiniteLoader(loader(splits.unlabeled, klass.unlabeled_items(config))) if klass.needs_unlabeled else None
    return Setup(config, device, net, student, teacher, ema, opt, it_l, it_u, autocast)


def time_in_memory(su: Setup, steps: int) -> float:
    """Seconds per step (forward, backward, optimiser) over ``steps`` batches drawn into memory beforehand."""
    batches = [su.next_batches() for _ in range(steps)]
    sync(su.device)
    t0 = time.perf_counter()
    for i, (bl, bu) in enumerate(batches):
        out = su.forward(bl, bu, i)
        su.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        su.update()
    sync(su.device)
    return (time.perf_counter() - t0) / steps


def bench_method(method: str, flags: list[str], steps: int, warmup: int, script: str = "2d",
                 in_memory: bool = False, compile_backend: str = "inductor", restart_workers: bool = False) -> dict:
    """Times ``steps`` steps after ``warmup`` ones (see the module docstring); returns the figures, the last
    loss (``loss``) and whether every parameter is still fp32 on the device (``weights_ok``)."""
    su = setup(method, flags, script, compile_backend, restart_workers)
    run, device, semi = su.config.run, su.device, su.semi
    data, model = su.config.data, su.config.model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    t = dict(data=0.0, forward=0.0, backward=0.0, optim=0.0)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = None
    for i in range(warmup + steps):
        timed = i >= warmup
        if timed and prof is None:
            prof = profile(activities=acts)
            prof.__enter__()
        t0 = time.perf_counter()
        batch_l, batch_u = su.next_batches()
        sync(device)
        t1 = time.perf_counter()
        out = su.forward(batch_l, batch_u, i)
        sync(device)
        t2 = time.perf_counter()
        su.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        sync(device)
        t3 = time.perf_counter()
        su.update()
        sync(device)
        t4 = time.perf_counter()
        if timed:
            for key, dt in (("data", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2), ("optim", t4 - t3)):
                t[key] += dt
    prof.__exit__(None, None, None)
    parts = {k: v / steps for k, v in scope_times(prof, device).items()}
    per = {k: v / steps for k, v in t.items()}
    step = per["data"] + per["forward"] + per["backward"] + per["optim"]
    model_fwd = sum(parts[p] for p in PARTS if p != "pcsw")
    glue = max(0.0, per["forward"] - model_fwd - parts["pcsw"])
    per_item = data.slab_len if script == "2d" else data.video_length     # images per unlabeled item
    images = (run.batch_size if script == "2d" else run.batch_size * data.video_length) + \
        (su.unlabeled_batch * per_item if semi else 0)
    peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    loss = float(out["loss"].detach())
    weights_ok = all(p.dtype == torch.float32 and p.device.type == device.type for p in su.net.parameters())
    in_mem = time_in_memory(su, steps) if in_memory else None
    return dict(method=method, script=script, clips=run.batch_size + (su.unlabeled_batch if semi else 0),
                step_in_memory=in_mem, loss=loss, weights_ok=weights_ok, amp=str(amp_dtype(device, run.amp)),
                device=str(device), step=step, data=per["data"], parts=parts, glue=glue,
                backward=per["backward"], optim=per["optim"], images=images, peak_gib=peak,
                peak_kind="CUDA allocator peak" if device.type == "cuda" else "process peak RSS",
                outside=(per["data"] + parts["pcsw"] + glue) / step,
                setting=f"{model.sam_config} @ {model.image_size}px, "
                + (f"b={run.batch_size}" if script == "2d"
                   else f"b={run.batch_size} clips of {data.video_length} slices")
                + (f" + {su.unlabeled_batch} unlabeled {'slabs' if script == '2d' else 'clips'}"
                   if semi else ""))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--script", choices=["2d", "3d"], default="2d", help="train_2d.py or train_3d.py step")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["supervised", "fixmatch", "sss"],
                   choices=["supervised", "fixmatch", "sss"])
    p.add_argument("--in-memory", type=int, choices=[0, 1], default=1,
                   help="also time the same number of steps on batches drawn into memory beforehand (no loader)")
    p.add_argument("--restart-workers", type=int, choices=[0, 1], default=0,
                   help="1: restart the DataLoader workers at every epoch (the old loaders), for comparison")
    opts = p.parse_args(own)
    warnings.filterwarnings("ignore", message=".*RANDOMLY INITIALISED.*")
    rows = [bench_method(m, flags, opts.steps, opts.warmup, opts.script, bool(opts.in_memory),
                         restart_workers=bool(opts.restart_workers)) for m in opts.methods]
    for r in rows:
        s = r["step"]
        print(f"\n== {r['method']}  ({r['setting']}, {r['device']}, {torch.get_num_threads()} CPU threads)")
        per_volume = f"   {s / r['clips']:.3f} s per training volume (clip)" if r["script"] == "3d" else ""
        print(f"step {s:.3f} s   {r['images'] / s:.1f} images/s{per_volume}   "
              f"peak memory {r['peak_gib']:.2f} GiB ({r['peak_kind']})")
        items = [("data", r["data"]), *[(k, r["parts"][k]) for k in PARTS], ("backward", r["backward"]),
                 ("optimiser+EMA", r["optim"]), ("python glue", r["glue"])]
        for name, v in items:
            print(f"  {name:14s} {v:8.3f} s  {100 * v / s:5.1f} %")
        print(f"  outside the model (data + PCSW + glue): {100 * r['outside']:.1f} % of the step")
        if r["step_in_memory"] is not None:
            print(f"  per step: {s:.3f} s with the DataLoader (waiting for batches included), "
                  f"{r['step_in_memory']:.3f} s with the batches already in memory")
    if len(rows) > 1:
        base = rows[0]["step"]
        print("\nstep time relative to " + rows[0]["method"] + ": "
              + ", ".join(f"{r['method']} {r['step'] / base:.2f}x" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
