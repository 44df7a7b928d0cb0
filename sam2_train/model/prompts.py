"""Prompts: the one prompt type of the project, and vectorised helpers (torch, any device, no per-sample loops).

Conventions (those of SAM-2's prompt encoder): boxes are ``xyxy`` in pixels with an exclusive max corner
(``x2 = last column + 1``); points are ``(x, y)`` = (column, row) pixel *indices*, the encoder adds 0.5 itself to
reach the pixel centre, so ``(5, 7)`` is the centre of the pixel in column 5, row 7 and ``(13.5, 21.5)`` the centre
of the 4x4 block of pixels 12..15 x 20..23. :meth:`Prompts.scaled` carries prompts to an image of another size.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from sam2_train.model.cutmix import mix

#: SAM point labels
LABEL_POS, LABEL_PAD = 1, -1
#: the fields of :class:`Prompts` that are per slab (n,K,...), not per row: PCSW's diagnostics
PER_SLAB = ("status", "windows", "scores")


@dataclass
class Prompts:
    """Per-image (or per-slice), per-class prompts; leading dims ``L`` are the images (N,) or slabs and slices
    (N, D) (PCSW).

    boxes (*L,K,4) float xyxy; points (*L,K,P,2) float xy pixel indices; point_labels (*L,K,P) int32 (1 positive,
    -1 padding); valid (*L,K) bool (the class is prompted); use_box: False for point prompts only (SemiSAM).
    Optional: masks (*L,K,h,w) bool, the prompted component (CutMix-consistent prompts); fallback (*L,K) bool, a
    PCSW fallback; status (n,K) int64, PCSW's per-slab class status (0 not predicted, 1 accepted, 2 fallback, 3
    rejected); windows (n,K,2) int64 and scores (n,K) float: PCSW's accepted window and its continuity."""
    boxes: torch.Tensor
    points: torch.Tensor
    point_labels: torch.Tensor
    valid: torch.Tensor
    use_box: bool = True
    masks: torch.Tensor | None = None
    fallback: torch.Tensor | None = None
    status: torch.Tensor | None = None
    windows: torch.Tensor | None = None
    scores: torch.Tensor | None = None

    @classmethod
    def single_point(cls, boxes: torch.Tensor, points: torch.Tensor, valid: torch.Tensor, **extra) -> "Prompts":
        """Prompts with one positive point per prompted class: points (*L,K,2) xy, padding where not ``valid``."""
        labels = torch.where(valid, LABEL_POS, LABEL_PAD).to(torch.int32)[..., None]
        return cls(boxes=boxes, points=points[..., None, :], point_labels=labels, valid=valid, **extra)

    def replace(self, **changes) -> "Prompts":
        return dataclasses.replace(self, **changes)

    def map_tensors(self, fn, per_slab: str = "map") -> "Prompts":
        """``fn`` applied to every tensor field; PCSW's per-slab diagnostics (:data:`PER_SLAB`) are mapped too
        (``"map"``), kept as they are (``"keep"``) or dropped (``"drop"``)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, torch.Tensor):
                out[f.name] = v
            elif f.name in PER_SLAB and per_slab != "map":
                out[f.name] = v if per_slab == "keep" else None
            else:
                out[f.name] = fn(v)
        return Prompts(**out)

    def select(self, rows) -> "Prompts":
        """The prompts of the leading-dim ``rows`` (an index, slice or index tensor); the per-slab PCSW
        diagnostics are dropped."""
        return self.map_tensors(lambda t: t[rows], per_slab="drop")

    def to(self, device) -> "Prompts":
        return self.map_tensors(lambda t: t.to(device))

    def flatten_rows(self, dims: int = 2) -> "Prompts":
        """Merge the first ``dims`` leading dims of the per-row fields ((N,D,...) -> (N*D,...)); the per-slab
        diagnostics keep their shape."""
        return self.map_tensors(lambda t: t.flatten(0, dims - 1), per_slab="keep")

    def scaled(self, size: int, to_size: int) -> "Prompts":
        """The same prompts on a ``to_size`` image of the same field of view as the ``size`` image (or map) they
        were made on: boxes scale by ``to_size / size`` (their edges stay on the same place of the image), a
        point keeps its pixel centre: ``(x + 0.5) * to_size / size - 0.5``."""
        if to_size == size:
            return self
        f = to_size / size
        points = torch.where(self.point_labels[..., None] >= 0, (self.points + 0.5) * f - 0.5, self.points)
        return self.replace(boxes=self.boxes * f, points=points)


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


def one_hot_fg(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N,h,w) int64 in 0..K -> (N,K,h,w) float one-hot of the foreground classes."""
    return F.one_hot(labels, k + 1)[..., 1:].permute(0, 3, 1, 2).float()


def gt_prompts(labels: torch.Tensor, k: int, image_size: int, jitter: float = 0.1) -> Prompts:
    """Jittered ground-truth boxes and one click per present class: labels (N,S,S) -> Prompts (N,K).

    The click is a uniformly drawn pixel of the class, as its (column, row) index in model-input pixels."""
    masks = one_hot_fg(labels, k).bool()                                      # (N,K,S,S)
    boxes, valid = masks_to_boxes(masks)
    boxes = jitter_boxes(boxes, valid, jitter, bounds=(image_size, image_size))
    points = sample_click(masks)[0]                                           # pixel indices, xy
    return Prompts.single_point(boxes, points, valid)


def choose_prompts(use_a: torch.Tensor, a: Prompts, b: Prompts) -> Prompts:
    """Per row (N,1) bool: prompts ``a`` where True, ``b`` elsewhere (boxes, points, valid, fallback)."""
    fa = a.fallback if a.fallback is not None else torch.zeros_like(a.valid)
    fb = b.fallback if b.fallback is not None else torch.zeros_like(b.valid)
    def pick(x, y):
        return torch.where(use_a.view(-1, *([1] * (x.dim() - 1))), x, y)
    return Prompts(boxes=pick(a.boxes, b.boxes), points=pick(a.points, b.points),
                   point_labels=pick(a.point_labels, b.point_labels), valid=torch.where(use_a, a.valid, b.valid),
                   fallback=torch.where(use_a, fa, fb))


def thin_prompt_frames(valid: torch.Tensor, freq: int) -> torch.Tensor:
    """Keep every ``freq``-th prompted frame of each class in each clip/volume: valid (B,T,K) -> (B,T,K) bool.

    The frames on which a class has a prompt are ranked along T (0, 1, 2, ...) per clip and class, and those
    of rank 0, freq, 2 freq, ... keep the prompt: every prompted class keeps its first prompted frame, and
    SAM-2 memory (which conditions each class on its own prompted frames) carries it through the others.
    ``freq = 1`` returns ``valid`` unchanged.
    """
    if freq <= 1:
        return valid
    rank = valid.long().cumsum(-2) - 1                                      # (B,T,K)
    return valid & (rank % freq == 0)


def _pixel_of(points: torch.Tensor, size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """points (n,K,2) xy model-input pixel indices -> (column, row) (n,K) long on a ``size`` grid."""
    cell = (points * (size / image_size)).floor().long().clamp(0, size - 1)
    return cell[..., 0], cell[..., 1]


def _on_mask(points: torch.Tensor, masks: torch.Tensor, image_size: int) -> torch.Tensor:
    """points (n,K,2) xy model-input pixel indices, masks (n,K,h,w) bool -> (n,K) bool: the point's cell is set."""
    n, k, h, w = masks.shape
    x, y = _pixel_of(points, w, image_size)
    return masks.flatten(2).gather(2, (y * w + x)[..., None])[..., 0]


def _in_cut(points: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """points (n,K,2) xy pixel indices, box_masks (n,S,S) -> (n,K) bool: the point's pixel is pasted."""
    size = box_masks.shape[-1]
    x, y = _pixel_of(points, size, size)
    return box_masks.flatten(1).gather(1, y.flatten(1) * size + x.flatten(1)).view(points.shape[:-1])


def interior_points(masks: torch.Tensor, depth: int = 8) -> torch.Tensor:
    """The most interior cell of each mask: masks (n,K,h,w) bool -> (n,K,2) float xy cell indices.

    Cells are ranked by how many 3x3 erosions (up to ``depth``; outside the map counts as background) they
    survive, ties by distance to the mask's centroid; empty masks give (0, 0).
    """
    m = masks.flatten(0, 1)[:, None].float()                                   # (nK,1,h,w)
    h, w = m.shape[-2:]
    level, cur = m.clone(), m
    for _ in range(depth):                                                     # fixed count: no host sync
        cur = 1.0 - F.max_pool2d(F.pad(1.0 - cur, (1, 1, 1, 1), value=1.0), 3, stride=1)
        level += cur
    yy, xx = torch.meshgrid(torch.arange(h, device=m.device, dtype=m.dtype),
                            torch.arange(w, device=m.device, dtype=m.dtype), indexing="ij")
    area = m.sum((2, 3), keepdim=True).clamp_min(1.0)
    cy, cx = (m * yy).sum((2, 3), keepdim=True) / area, (m * xx).sum((2, 3), keepdim=True) / area
    dist2 = (yy - cy) ** 2 + (xx - cx) ** 2                                    # < h*h + w*w
    score = torch.where(m > 0, level * (h * h + w * w + 1) - dist2, torch.full_like(m, -1.0))
    idx = score.flatten(1).argmax(1)
    pts = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).to(torch.float32)
    pts = torch.where(m.flatten(1).any(1)[:, None], pts, torch.zeros_like(pts))
    return pts.view(*masks.shape[:2], 2)


def mix_prompts(prompts: Prompts, partner: torch.Tensor, box_masks: torch.Tensor, image_size: int,
                margin: int) -> Prompts:
    """Prompts (one point per class) of CutMix-ed images, mixed the way their pixels were.

    The prompted component masks (n,K,s,s) are mixed by the same boxes and re-boxed (plus ``margin``
    coarse pixels). Every click of a class with a mixed component lies on that component (hence inside its
    box): the row's own click if its class was prompted and the click is outside the pasted box, else the
    partner's click if that class was prompted there and the click is inside the pasted box, else the most
    interior cell of the mixed component (:func:`interior_points`) -- e.g. when only a piece of the
    partner's component was pasted, or the class was not prompted in the row (no click, or a thinned 3D
    frame). A class without a mixed component gets the click (0, 0) (it is not prompted). A class is a PCSW
    fallback in a mixed row where it is one in the row or in its partner (the stricter rule of the two).
    """
    s = prompts.masks.shape[-1]
    masks = mix(prompts.masks, partner, box_masks)
    boxes, valid = masks_to_boxes(masks)
    pad = boxes.new_tensor([-margin, -margin, margin, margin])
    boxes = (boxes + pad).clamp(0, s) * (image_size / s)
    own = prompts.points[..., 0, :]
    other = own[partner]
    own_ok = prompts.valid & ~_in_cut(own, box_masks) & _on_mask(own, masks, image_size)
    other_ok = prompts.valid[partner] & _in_cut(other, box_masks) & _on_mask(other, masks, image_size)
    inner = (interior_points(masks) + 0.5) * (image_size / s) - 0.5           # cell centre, pixel indices
    points = torch.where(own_ok[..., None], own, torch.where(other_ok[..., None], other, inner))
    points = torch.where(valid[..., None], points, torch.zeros_like(points))
    fallback = None if prompts.fallback is None else prompts.fallback | prompts.fallback[partner]
    return Prompts.single_point(boxes, points, valid, masks=masks, fallback=fallback)
