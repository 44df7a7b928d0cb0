"""Time and peak memory of the label-free 3D evaluation of one volume (streamed SAM-2 memory).

    python bench/bench_eval_3d.py                                      # 512x512x60 volume, Hiera-T @ 128 px, CPU
    python bench/bench_eval_3d.py --size 512 512 60 -- -sam_config sam2_hiera_s -image_size 1024 -device cuda

Everything after ``--`` is a train_3d.py flag (cfg.py). The volume is a synthetic CT-like phantom in [0,1];
the coarse head's bias makes class 1 win everywhere and the prompts are the unconstrained boxes (``-pcsw 0``),
so every slice is prompted (the worst case for the memory bank: all frames become conditioning frames,
thinned by -prompt_freq) while all ``--classes`` objects are tracked. Prints seconds per volume and
peak memory: the CUDA allocator peak on a GPU, the growth of the process peak RSS on CPU.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cfg  # noqa: E402
from sam2_train.engine.device import autocast as autocast_ctx  # noqa: E402
from sam2_train.engine.device import select_device  # noqa: E402
from sam2_train.methods.networks import network  # noqa: E402


def phantom(h: int, w: int, d: int) -> np.ndarray:
    """(D,H,W) head-like ellipse with a bright blob, values in [0,1]."""
    yy, xx = np.mgrid[0:h, 0:w]
    head = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.36 * w)) ** 2 < 1
    blob = ((yy - 0.4 * h) / (0.08 * h)) ** 2 + ((xx - 0.55 * w) / (0.06 * w)) ** 2 < 1
    sl = (0.4 * head + 0.5 * blob).astype(np.float32)
    return np.repeat(sl[None], d, axis=0)


def bench_volume(flags: list[str], size=(512, 512, 60), classes: int = 5) -> dict:
    """Label-free evaluation of one phantom volume of ``size`` (H,W,D) under train_3d.py ``flags``:
    {"seconds", "per_slice", "foreground", "shape" (D,H,W) and "max_label" of the prediction, "peak_gib"
    (CUDA allocator peak, None on CPU), "base_gib", "rss_growth_mib", "peak_rss_gib", "setting", "device"}."""
    config = cfg.parse_config(["-dataset", "demo", "-distributed", "none", "-pcsw", "0", *flags], script="3d")
    config = config.replace(model={"num_classes": classes})
    run, model = config.run, config.model
    device = select_device(run.device, run.gpu_device)
    sam2 = network("sam2")
    net = sam2.build(model, device=device)
    with torch.no_grad():   # class 1 wins everywhere: every slice gets a prompt
        net.head.cls.bias.copy_(torch.tensor([0.0, 8.0] + [0.0] * (classes - 1)))
    h, w, d = size
    image = phantom(h, w, d)
    autocast = lambda: autocast_ctx(device, run.amp)  # noqa: E731
    predict = lambda img: sam2.predict(net, img, config=config, infer="boxes", device=device,  # noqa: E731
                                       autocast=autocast)
    predict(image[:2])                                                         # warm-up
    base = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**30
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    pred = predict(image)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(seconds=dt, per_slice=dt / d, foreground=float((pred > 0).mean()), base_gib=base,
                shape=tuple(pred.shape), max_label=int(pred.max()),
                peak_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                rss_growth_mib=(rss1 - rss0) / 2**10, peak_rss_gib=rss1 / 2**20, device=str(device),
                setting=f"volume {h}x{w}x{d}, {model.sam_config} @ {model.image_size}px, {classes} classes, "
                        f"prompt_freq {config.infer.prompt_freq}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, flags = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=3, default=(512, 512, 60), metavar=("H", "W", "D"))
    p.add_argument("--classes", type=int, default=5)
    opts = p.parse_args(own)
    warnings.filterwarnings("ignore", message=".*RANDOMLY INITIALISED.*")
    r = bench_volume(flags, tuple(opts.size), opts.classes)
    print(f"{r['setting']}, {r['device']}: {r['seconds']:.1f} s per volume, {r['per_slice']:.2f} s per slice, "
          f"foreground {100 * r['foreground']:.1f}%")
    if r["peak_gib"] is not None:
        print(f"peak CUDA memory {r['peak_gib']:.2f} GiB "
              f"(weights and buffers before the volume: {r['base_gib']:.2f} GiB)")
    print(f"process peak RSS grew by {r['rss_growth_mib']:.0f} MiB during the volume "
          f"(peak RSS {r['peak_rss_gib']:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
