"""CutMix inside a batch (UniMatch's recipe), for images, pseudo-labels, confidences and prompt masks.

Shapes: n rows (images or frames), S image size; a box mask (n,S,S) is True where a row takes its partner's
pixels. Boxes are ``x0, y0, x1, y1`` half-open in image pixels.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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


def sample_box_masks(n: int, size: int, p: float, device) -> torch.Tensor:
    """CutMix regions of n images: (n,S,S) bool (all False where CutMix is not applied)."""
    boxes, _ = sample_cutmix_boxes(n, size, size, p, None)
    return cutmix_box_masks(boxes.to(device), size, size)


def resize_masks(box_masks: torch.Tensor, size) -> torch.Tensor:
    """(n,S,S) bool -> (n,h,w) bool by nearest neighbour (for feature levels and coarse maps)."""
    return F.interpolate(box_masks[:, None].float(), size=size, mode="nearest")[:, 0].bool()


def mix(x: torch.Tensor, partner: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """CutMix ``x`` (n,...,h,w) with ``x[partner]`` inside ``box_masks`` (n,S,S), resized to x's grid."""
    m = box_masks if box_masks.shape[-2:] == x.shape[-2:] else resize_masks(box_masks, x.shape[-2:])
    return apply_cutmix(x, x[partner], m)


def clip_cutmix_partners(num_clips: int, length: int, device=None) -> torch.Tensor:
    """CutMix partners for ``num_clips`` clips of ``length`` frames, flattened clip-major: (num_clips*length,).

    With several clips, frame t of a clip takes frame t of another clip (a random roll of the clips);
    with one clip it takes frame ``length-1-t`` of the same clip (the clip reversed in time), so the pasted
    content still moves smoothly from frame to frame (the middle frame of an odd-length clip mixes with
    itself, i.e. keeps its own content).
    """
    t = torch.arange(length)
    if num_clips > 1:
        clips = sample_cutmix_partners(num_clips)
        idx = clips[:, None] * length + t[None]
    else:
        idx = (length - 1 - t)[None]
    return idx.flatten().to(device)
