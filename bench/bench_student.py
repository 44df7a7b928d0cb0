"""Training-step time of a lightweight student (``-student unet|unetpp``) per precision and memory layout, one run.

    python bench/bench_student.py                          # U-Net, 256 px, 12 slices: SSL4MIS's step, CPU or GPU
    python bench/bench_student.py --student unetpp --device cuda --batch 24

Times ``--steps`` supervised steps (forward of every head, CE + Dice, backward, AdamW) after ``--warmup``
untimed ones in three settings: fp32 with contiguous (NCHW) weights, fp32 channels-last (what
:class:`~sam2_train.model.students.UNetStudent` uses), and channels-last under bf16 autocast (``-amp bf16``;
the default on CUDA). It prints seconds per step and each setting's speed-up over the first, so the ratios
come from one process on one machine. On CPUs, bf16 pays off only on cores with AMX / AVX512-BF16.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sam2_train.methods.unet.base import heads_loss  # noqa: E402
from sam2_train.engine.device import autocast, select_device  # noqa: E402
from sam2_train.model.students import UNetStudent  # noqa: E402

SETTINGS = (("fp32, NCHW", "contiguous", "off"), ("fp32, channels-last", "channels_last", "off"),
            ("bf16, channels-last", "channels_last", "bf16"))


def step_time(net: UNetStudent, images: torch.Tensor, labels: torch.Tensor, amp: str, steps: int, warmup: int):
    """Seconds per optimiser step of ``net`` on one fixed batch: images (B,1,S,S), labels (B,S,S)."""
    device = images.device
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with autocast(device, amp):
            loss = heads_loss(net.heads(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--student", choices=("unet", "unetpp"), default="unet")
    p.add_argument("--image_size", type=int, default=256)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--classes", type=int, default=3, help="foreground classes (ACDC: 3)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    args = p.parse_args(argv)
    device = select_device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, args.image_size, args.image_size, generator=g).to(device)
    labels = torch.randint(0, args.classes + 1, (args.batch, args.image_size, args.image_size), generator=g).to(device)
    print(f"{args.student}, {args.batch} x {args.image_size} px, {args.classes + 1} classes, on {device} "
          f"({torch.get_num_threads()} threads): {args.steps} timed steps after {args.warmup}")
    base = None
    for name, layout, amp in SETTINGS:
        torch.manual_seed(0)
        net = UNetStudent(args.student, args.classes, args.image_size).to(device)
        if layout == "contiguous":
            net.net.to(memory_format=torch.contiguous_format)
        t = step_time(net, images, labels, amp, args.steps, args.warmup)
        base = base or t
        print(f"  {name:<22} {t:7.3f} s/step   x{base / t:.2f}")


if __name__ == "__main__":
    main()
