"""Augmentation: weak geometric, strong photometric, and batched CutMix.

* :func:`apply_weak` of :func:`sample_weak` - rot90 + flip (p=0.5) or a small rotation (p=0.5 of the rest), random
  scale-crop and translation at the model size. One transform for a whole stack (a slab or clip): the
  stack is first resized to the model size as at inference (:func:`resize_image`, bilinear, antialiased
  when shrinking; label nearest), then resampled by the affine transform (image bilinear, label nearest),
  so image and label stay aligned.
* :func:`strong_photometric` - brightness, contrast, gamma, Gaussian blur, Gaussian noise. Pixel-wise
  or local symmetric operations only: a strong view never moves a pixel, so weak-view pseudo-labels and
  prompts stay valid on it.
* CutMix inside a batch: :func:`sample_cutmix_boxes`, :func:`cutmix_box_masks`, :func:`apply_cutmix`,
  :func:`sample_cutmix_partners`. The same boxes mix images, labels, pseudo-labels, confidences and
  per-class prompt masks.

All random draws come from the ``numpy.random.Generator`` / ``torch.Generator`` passed in (never the
global RNGs), so a dataset item is a pure function of (seed, epoch, index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sam2_train.model.resize import resize_image, resize_label  # noqa: F401  (the one resize rule)


# ---------------------------------------------------------------------------------------------
# weak geometric


@dataclass
class WeakParams:
    p_rot90_flip: float = 0.5      # rot90 (k in 0..3) + flip along one axis, as SSL4MIS/UniMatch
    p_rotate: float = 0.5          # else, small rotation with this probability
    max_angle: float = 20.0        # degrees
    scale: tuple = (0.9, 1.15)     # zoom factor (>1 crops in)
    max_shift: float = 0.08        # translation, fraction of the image side
    p_scale: float = 0.5


def sample_weak(rng: np.random.Generator, params: WeakParams = WeakParams()) -> dict:
    """Draw one weak transform (a dict of plain numbers)."""
    t = {"k": 0, "flip": -1, "angle": 0.0, "zoom": 1.0, "tx": 0.0, "ty": 0.0}
    if rng.random() < params.p_rot90_flip:
        t["k"] = int(rng.integers(0, 4))
        t["flip"] = int(rng.integers(0, 2))
    elif rng.random() < params.p_rotate:
        t["angle"] = float(rng.uniform(-params.max_angle, params.max_angle))
    if rng.random() < params.p_scale:
        t["zoom"] = float(rng.uniform(*params.scale))
        t["tx"] = float(rng.uniform(-params.max_shift, params.max_shift))
        t["ty"] = float(rng.uniform(-params.max_shift, params.max_shift))
    return t


def apply_weak(image: torch.Tensor, label: torch.Tensor | None, t: dict, out_size: int):
    """Apply transform ``t`` to ``image`` (N,C,H,W) float and ``label`` (N,H,W) int (or None);
    returns tensors at (out_size, out_size). The whole stack gets the same transform.

    The stack is resized to ``out_size`` first (:func:`resize_image`, the resize of inference), then the
    rotation / scale / translation resamples it at that size."""
    if t["k"]:
        image = torch.rot90(image, t["k"], dims=(-2, -1))
        label = None if label is None else torch.rot90(label, t["k"], dims=(-2, -1))
    if t["flip"] >= 0:
        d = -2 if t["flip"] == 0 else -1
        image = torch.flip(image, dims=(d,))
        label = None if label is None else torch.flip(label, dims=(d,))
    n = image.shape[0]
    image = resize_image(image, out_size)
    label = None if label is None else resize_label(label, out_size)
    identity = t["angle"] == 0.0 and t["zoom"] == 1.0 and t["tx"] == 0.0 and t["ty"] == 0.0
    if identity:
        return image.contiguous(), (None if label is None else label.contiguous())
    a = math.radians(t["angle"])
    c, s = math.cos(a) / t["zoom"], math.sin(a) / t["zoom"]
    theta = torch.tensor([[c, -s, t["tx"]], [s, c, t["ty"]]], dtype=torch.float32)
    grid = F.affine_grid(theta.unsqueeze(0), (1, 1, out_size, out_size), align_corners=False)
    grid = grid.expand(n, out_size, out_size, 2)      # one grid for the whole stack
    image = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if label is not None:
        lab = F.grid_sample(label[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)
        label = lab[:, 0].round().long()
    return image.clamp_(0.0, 1.0), label


# ---------------------------------------------------------------------------------------------
# strong photometric


@dataclass
class StrongParams:
    p_jitter: float = 0.8
    brightness: float = 0.4        # multiplicative factor in [1-b, 1+b]
    contrast: float = 0.4          # around the image mean, factor in [1-c, 1+c]
    gamma: tuple = (0.7, 1.5)
    p_blur: float = 0.5
    sigma: tuple = (0.1, 2.0)      # pixels at the model size
    p_noise: float = 0.5
    noise_std: tuple = (0.0, 0.05)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N,C,H,W), reflect padding (symmetric kernel: no shift).
    Written as weighted sums of shifted views (about 10x faster than a 1-channel conv2d on CPU)."""
    k = _gauss_kernel(sigma)
    r = (k.numel() - 1) // 2
    n, c, h, w = x.shape
    if r >= min(h, w):
        return x
    kw = [float(v) for v in k]
    y = F.pad(x.reshape(n * c, 1, h, w), (r, r, 0, 0), mode="reflect")
    acc = y[..., :, 0:w] * kw[0]
    for i in range(1, len(kw)):
        acc.add_(y[..., :, i:i + w], alpha=kw[i])
    y = F.pad(acc, (0, 0, r, r), mode="reflect")
    acc = y[..., 0:h, :] * kw[0]
    for i in range(1, len(kw)):
        acc.add_(y[..., i:i + h, :], alpha=kw[i])
    return acc.reshape(n, c, h, w)


def strong_photometric(x: torch.Tensor, rng: np.random.Generator, gen: torch.Generator,
                       params: StrongParams = StrongParams()) -> torch.Tensor:
    """One strong view of a stack ``x`` (N,C,H,W) in [0,1]; the same photometric parameters for the
    N slices (one view of one volume), independent noise per pixel. Output in [0,1], same shape."""
    y = x.float().clone()
    if rng.random() < params.p_jitter:
        order = rng.permutation(3)
        for op in order:
            if op == 0:
                y.mul_(float(rng.uniform(1 - params.brightness, 1 + params.brightness)))
            elif op == 1:
                m = y.mean(dim=(-3, -2, -1), keepdim=True)
                f = float(rng.uniform(1 - params.contrast, 1 + params.contrast))
                y.mul_(f).add_(m * (1.0 - f))
            else:
                y.clamp_(0.0, 1.0).pow_(float(rng.uniform(*params.gamma)))
        y.clamp_(0.0, 1.0)
    if rng.random() < params.p_blur:
        y = gaussian_blur(y, float(rng.uniform(*params.sigma)))
    if rng.random() < params.p_noise:
        std = float(rng.uniform(*params.noise_std))
        y.add_(torch.randn(y.shape, generator=gen).mul_(std))
    return y.clamp_(0.0, 1.0)
