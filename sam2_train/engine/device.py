"""Device, precision and seeds of a training process: :func:`select_device` (``-device``, ``-gpu_device``,
``LOCAL_RANK`` under torchrun), bf16 autocast (``-amp``, :func:`autocast`) and :func:`seed_everything`."""
from __future__ import annotations

import contextlib
import os
import random
import warnings
from typing import Optional

import numpy as np
import torch

from sam2_train.engine.errors import UserError

__all__ = ["env_int", "select_device", "enable_tf32", "amp_dtype", "autocast", "seed_everything", "DeviceError"]


class DeviceError(UserError, RuntimeError):
    """A ``-device`` / ``-gpu_device`` this machine does not have (reported in one line by every script)."""

def env_int(name: str) -> Optional[int]:
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    return int(v)


def select_device(device: str = "auto", gpu_device: int = 0) -> torch.device:
    """The device for this process from ``device`` (auto/cuda/cpu, flag ``-device``) and ``gpu_device``.

    Under torchrun the environment's ``LOCAL_RANK`` picks the GPU (``-gpu_device`` is then ignored).
    ``-device cuda`` without a usable GPU raises a :class:`DeviceError` (a user error) saying so. On CUDA the device
    is made current (``torch.cuda.set_device``) and TF32 matmuls/convolutions are enabled.
    """
    want = (device or "auto").lower()
    if want not in ("auto", "cuda", "cpu"):
        raise ValueError(f"-device must be auto, cuda or cpu, got {want!r}")
    has_cuda = torch.cuda.is_available()
    if want == "cpu" or (want == "auto" and not has_cuda):
        return torch.device("cpu")
    if not has_cuda:
        raise DeviceError("-device cuda was requested but CUDA is not available "
                          f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                          "use -device cpu or -device auto")
    local_rank = env_int("LOCAL_RANK")
    index = local_rank if local_rank is not None else int(gpu_device or 0)
    n = torch.cuda.device_count()
    if index >= n:
        src = "LOCAL_RANK" if local_rank is not None else "-gpu_device"
        raise DeviceError(f"{src}={index} but only {n} CUDA device(s) are visible")
    torch.cuda.set_device(index)
    enable_tf32()
    return torch.device("cuda", index)


def enable_tf32() -> None:
    """Allow TF32 for fp32 matmuls and cuDNN convolutions (no effect on CPU).

    Uses ``torch.set_float32_matmul_precision("high")`` (and cuDNN's ``allow_tf32``): with these, both the
    legacy ``allow_tf32`` flags and the newer ``fp32_precision`` ones read consistently, whereas setting only
    the new ``fp32_precision`` API makes later reads of the legacy flags (by other libraries) raise.
    """
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def amp_dtype(device: torch.device | str, amp: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for ``-amp`` on ``device``, or ``None`` for full fp32.

    ``auto``: bf16 on CUDA (when the GPU supports it), off on CPU. ``bf16``: bf16 on CUDA and also on CPU
    (``torch.autocast("cpu", torch.bfloat16)``: on cores with AMX (Xeon Sapphire Rapids and later) a U-Net
    step is about 2x faster than fp32, on CPUs without AMX/AVX512-BF16 it is usually slower). ``off``: fp32.
    """
    device = torch.device(device)
    amp = (amp or "auto").lower()
    if amp == "off":
        return None
    if amp not in ("auto", "bf16"):
        raise ValueError(f"-amp must be auto, bf16 or off, got {amp!r}")
    if device.type == "cuda":
        if amp == "auto" and not torch.cuda.is_bf16_supported():
            warnings.warn("this GPU does not support bf16: -amp auto runs in fp32")
            return None
        return torch.bfloat16
    if device.type == "cpu":
        return torch.bfloat16 if amp == "bf16" else None
    return torch.bfloat16 if amp == "bf16" else None


def autocast(device: torch.device | str, amp: str = "auto"):
    """Context manager: bf16 autocast per :func:`amp_dtype`, else a no-op. Never casts the model:
    weights stay fp32 (Adam updates in bf16 would round to zero)."""
    device = torch.device(device)
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python ``random``, numpy's global RNG, torch CPU and all CUDA RNGs with ``seed + rank``
    (so ranks draw different augmentations/dropout). Returns the seed used."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)  # seeds every CUDA device as well
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)
    return s
