"""Augmentation: weak geometric, strong photometric, and batched CutMix.

* :func:`weak_geometric` - rot90 + flip (p=0.5) or a small rotation (p=0.5 of the rest), random
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


def weak_geometric(image: torch.Tensor, label: torch.Tensor | None, out_size: int,
                   rng: np.random.Generator, params: WeakParams = WeakParams()):
    """Sample and apply one weak transform to a stack: image (N,C,H,W), label (N,H,W) or None."""
    return apply_weak(image, label, sample_weak(rng, params), out_size)


def resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """(N,C,H,W) float -> (N,C,size,size) in [0,1], bilinear (antialiased when shrinking). The one resize of
    images to the model size, in training (:func:`apply_weak`) and inference alike."""
    if image.shape[-2:] == (size, size):
        return image
    shrink = image.shape[-1] > size or image.shape[-2] > size
    return F.interpolate(image.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink).clamp_(0.0, 1.0)


def resize_label(label: torch.Tensor, size: int) -> torch.Tensor:
    """(N,H,W) int -> (N,size,size), nearest."""
    if label.shape[-2:] == (size, size):
        return label
    return F.interpolate(label[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


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


# ---------------------------------------------------------------------------------------------
# CutMix (batched, inside a batch)


def sample_cutmix_boxes(n: int, H: int, W: int, p: float = 0.5, generator: torch.Generator | None = None,
                        area: tuple = (0.02, 0.4), ratio: tuple = (0.3, 1 / 0.3)):
    """Draw ``n`` CutMix boxes (UniMatch's recipe: area 2-40% of the image, aspect ratio in
    [0.3, 1/0.3], box inside the image), each applied with probability ``p``.

    Returns ``(boxes, applied)``: boxes (n,4) int64 ``x0, y0, x1, y1`` (half-open, pixels;
    an unapplied row is the empty box 0,0,0,0) and applied (n,) bool."""
    g = generator
    u = torch.rand(n, 5, generator=g)
    applied = u[:, 0] < p
    a = (area[0] + (area[1] - area[0]) * u[:, 1]) * H * W
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 2]
    r = torch.exp(logr)
    bw = torch.sqrt(a * r).round().clamp(1, W).long()
    bh = torch.sqrt(a / r).round().clamp(1, H).long()
    x0 = (u[:, 3] * (W - bw + 1).float()).floor().long().clamp(max=W - 1)
    y0 = (u[:, 4] * (H - bh + 1).float()).floor().long().clamp(max=H - 1)
    boxes = torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1)
    boxes = torch.where(applied[:, None], boxes, torch.zeros_like(boxes))
    return boxes, applied


def cutmix_box_masks(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(n,4) xyxy boxes -> (n,H,W) bool masks (True inside the box: take the other sample)."""
    boxes = boxes.to(torch.long)
    xs = torch.arange(W, device=boxes.device)
    ys = torch.arange(H, device=boxes.device)
    inx = (xs[None] >= boxes[:, 0:1]) & (xs[None] < boxes[:, 2:3])
    iny = (ys[None] >= boxes[:, 1:2]) & (ys[None] < boxes[:, 3:4])
    return iny[:, :, None] & inx[:, None, :]


def scale_boxes(boxes: torch.Tensor, src: tuple, dst: tuple) -> torch.Tensor:
    """Map xyxy boxes drawn at size src=(H,W) to size dst=(H',W') (e.g. the coarse-map size)."""
    sy, sx = dst[0] / src[0], dst[1] / src[1]
    b = boxes.float()
    out = torch.stack([(b[:, 0] * sx).floor(), (b[:, 1] * sy).floor(),
                       (b[:, 2] * sx).ceil(), (b[:, 3] * sy).ceil()], dim=1).long()
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    return torch.where(empty[:, None], torch.zeros_like(out), out)


def apply_cutmix(x: torch.Tensor, x_other: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """Where ``box_masks`` (n,H,W) is True take ``x_other``, else ``x``. Works for images (n,C,H,W),
    labels / confidences (n,H,W), per-class masks (n,K,H,W), stacks (n,T,C,H,W): the mask broadcasts
    over every dimension between the batch and the last two."""
    if x.shape != x_other.shape:
        raise ValueError(f"apply_cutmix: shapes differ {tuple(x.shape)} vs {tuple(x_other.shape)}")
    if x.shape[0] != box_masks.shape[0] or x.shape[-2:] != box_masks.shape[-2:]:
        raise ValueError(f"apply_cutmix: masks {tuple(box_masks.shape)} do not fit tensor {tuple(x.shape)}")
    m = box_masks.to(device=x.device, dtype=torch.bool)
    m = m.view(m.shape[0], *([1] * (x.dim() - 3)), *m.shape[-2:])
    return torch.where(m, x_other, x)


def sample_cutmix_partners(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A permutation with no fixed point (a random roll) pairing each sample with another one of the
    batch: ``x_other = x[perm]``. For n == 1 returns [0] (CutMix then mixes a sample with itself)."""
    if n <= 1:
        return torch.zeros(n, dtype=torch.long)
    shift = int(torch.randint(1, n, (1,), generator=generator))
    return torch.roll(torch.arange(n), shift)
