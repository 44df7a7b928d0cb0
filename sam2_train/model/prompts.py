"""Vectorised prompt helpers (torch, any device, no per-sample Python loops).

Conventions: boxes are ``xyxy`` in pixels with exclusive max corner (``x2 = last column + 1``), points are
``(x, y)`` = (column, row) pixel indices (SAM's prompt encoder adds 0.5 itself to hit pixel centres).
"""
from __future__ import annotations

from typing import Sequence

import torch

#: SAM point labels
LABEL_NEG, LABEL_POS, LABEL_BOX_TL, LABEL_BOX_BR, LABEL_PAD = 0, 1, 2, 3, -1


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def masks_to_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes of binary masks.

    Args:
        masks: (..., H, W) bool (or any dtype; nonzero = foreground).
    Returns:
        boxes: (..., 4) float32 ``x1, y1, x2, y2`` with ``x2 = max column + 1``, ``y2 = max row + 1``;
            all zeros for empty masks.
        valid: (...) bool, False for empty masks.
    """
    m = masks.bool()
    H, W = m.shape[-2:]
    rows = m.any(dim=-1)  # (..., H)
    cols = m.any(dim=-2)  # (..., W)
    valid = rows.any(dim=-1)
    ar_h = torch.arange(H, device=m.device)
    ar_w = torch.arange(W, device=m.device)
    y1 = torch.where(rows, ar_h, H).amin(dim=-1)
    y2 = torch.where(rows, ar_h, -1).amax(dim=-1) + 1
    x1 = torch.where(cols, ar_w, W).amin(dim=-1)
    x2 = torch.where(cols, ar_w, -1).amax(dim=-1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).float()
    boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
    return boxes, valid


def jitter_boxes(boxes: torch.Tensor, valid: torch.Tensor | None, frac: float,
                 generator: torch.Generator | None = None,
                 bounds: int | Sequence[int] | None = None) -> torch.Tensor:
    """Randomly move each box edge by up to ``frac`` of the box's width (x) / height (y).

    Args:
        boxes: (..., 4) xyxy float.
        valid: (...) bool or None; invalid boxes are returned unchanged.
        frac: maximum relative shift per edge (uniform in ``[-frac, frac]`` x side length).
        generator: torch generator on ``boxes.device`` for reproducibility.
        bounds: image size ``S`` or ``(H, W)``; boxes are clamped to ``[0, W] x [0, H]``.
    Returns:
        (..., 4) float boxes; each keeps ``x2 >= x1 + 1`` and ``y2 >= y1 + 1``.
    """
    boxes = boxes.float()
    if frac <= 0:
        return boxes.clone()
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp_min(1.0)  # (..., 2)
    scale = torch.cat([wh, wh], dim=-1)  # (..., 4): w, h, w, h
    noise = torch.rand(boxes.shape, generator=generator, device=boxes.device, dtype=boxes.dtype) * 2 - 1
    out = boxes + noise * frac * scale
    x1 = torch.minimum(out[..., 0], out[..., 2])
    x2 = torch.maximum(out[..., 0], out[..., 2])
    y1 = torch.minimum(out[..., 1], out[..., 3])
    y2 = torch.maximum(out[..., 1], out[..., 3])
    if bounds is not None:
        H, W = _hw(bounds)
        x1, x2 = x1.clamp(0.0, W - 1.0), x2.clamp(1.0, float(W))
        y1, y2 = y1.clamp(0.0, H - 1.0), y2.clamp(1.0, float(H))
    x2 = torch.maximum(x2, x1 + 1)  # at least one pixel (still inside the bounds: x1 <= W - 1)
    y2 = torch.maximum(y2, y1 + 1)
    out = torch.stack([x1, y1, x2, y2], dim=-1)
    if valid is not None:
        out = torch.where(valid.bool()[..., None], out, boxes)
    return out


def boxes_to_points(boxes: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes as SAM corner points.

    Args:
        boxes: (..., 4) xyxy.
        valid: optional (...) bool; invalid boxes get padding labels (-1).
    Returns:
        coords: (..., 2, 2) float ``[[x1, y1], [x2, y2]]``.
        labels: (..., 2) int32 ``[2, 3]`` (top-left, bottom-right) or ``[-1, -1]`` where invalid.
    """
    coords = boxes.float().reshape(*boxes.shape[:-1], 2, 2)
    labels = torch.tensor([LABEL_BOX_TL, LABEL_BOX_BR], dtype=torch.int32, device=boxes.device)
    labels = labels.expand(*boxes.shape[:-1], 2)
    if valid is not None:
        labels = torch.where(valid.bool()[..., None], labels, torch.full_like(labels, LABEL_PAD))
    return coords, labels.contiguous()


def sample_click(masks: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One positive click per mask, uniformly among its foreground pixels.

    Args:
        masks: (..., H, W) bool.
        generator: torch generator on ``masks.device``.
    Returns:
        coords: (..., 2) float ``(x, y)`` = (column, row) -- NOT (row, col); zeros for empty masks.
        labels: (...) int32, 1 for a click, -1 (padding) for empty masks.
    """
    m = masks.bool()
    H, W = m.shape[-2:]
    flat = m.flatten(-2)  # (..., H*W)
    scores = torch.rand(flat.shape, generator=generator, device=m.device) + 1.0  # in [1, 2)
    scores = torch.where(flat, scores, torch.zeros_like(scores))
    idx = scores.argmax(dim=-1)  # (...)
    valid = flat.any(dim=-1)
    x = (idx % W).float()
    y = torch.div(idx, W, rounding_mode="floor").float()
    coords = torch.stack([x, y], dim=-1)
    coords = torch.where(valid[..., None], coords, torch.zeros_like(coords))
    labels = torch.where(valid, torch.full_like(idx, LABEL_POS), torch.full_like(idx, LABEL_PAD)).to(torch.int32)
    return coords, labels


def scale_boxes(boxes: torch.Tensor, from_size: int | Sequence[int], to_size: int | Sequence[int]) -> torch.Tensor:
    """Rescale xyxy boxes (..., 4) from an image of ``from_size`` (S or (H, W)) to ``to_size``."""
    fh, fw = _hw(from_size)
    th, tw = _hw(to_size)
    s = torch.tensor([tw / fw, th / fh, tw / fw, th / fh], device=boxes.device, dtype=torch.float32)
    return boxes.float() * s


def scale_points(points: torch.Tensor, from_size: int | Sequence[int], to_size: int | Sequence[int]) -> torch.Tensor:
    """Rescale xy points (..., 2) from an image of ``from_size`` (S or (H, W)) to ``to_size``."""
    fh, fw = _hw(from_size)
    th, tw = _hw(to_size)
    return points.float() * torch.tensor([tw / fw, th / fh], device=points.device, dtype=torch.float32)
