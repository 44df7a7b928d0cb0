"""A SAM-2 guide that labels images from a student's prediction (Knowledge Mining, SemiSAM, SAM-Match).

The student's class probabilities become prompts, each baseline its paper's way: Knowledge Mining's outer box of
each class's thresholded mask plus its most probable pixels (:func:`box_point_prompts`), SemiSAM's point prompts
(:func:`interior_point_prompts`), SAM-Match's box of the largest connected piece of each class of the argmax, widened
by ``bbox_shift`` pixels (:func:`largest_component_boxes`). :class:`SAMGuide` runs SAM-2 at its own input size
(``-guide_size``, default 1024, SAM-2's native size): images are resized up, prompts scaled by guide_size / S and
the masks brought back to the student's grid; every class of every image is one decoder call, in bf16 on CUDA.
The guide is frozen (no autograd) unless it is SAM-Match's fine-tuned one (``trainable``).
:func:`sam_labels` turns SAM-2's masks into a label map. Shapes: N images, K foreground classes, S the student's
image size, P points per class.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from sam2_train.model.build import build_sam2_base
from sam2_train.model.labels import mask_unprompted, pseudo_labels
from sam2_train.model.prompts import Prompts, interior_points, masks_to_boxes
from sam2_train.model.resize import resize_image, upsample
from sam2_train.model.sam2_model import SAM2Seg


def box_point_prompts(probs: torch.Tensor, *, thresh: float = 0.5, num_points: int = 1,
                      generator: torch.Generator | None = None) -> Prompts:
    """Knowledge Mining's prompts from class probabilities probs (N,K+1,S,S) (softmax, at the input size).

    Class k's mask is the pixels whose argmax is k and whose probability is >= ``thresh`` (SAM-Match's
    high-confidence region with ``thresh = tau``); the class is prompted when the mask is not empty, by the
    mask's outer box and the ``num_points`` pixels of highest probability inside it (fewer when the mask is
    smaller: the rest are padding). Pixels of equal probability are ranked in the order of one random
    permutation of the pixels drawn from ``generator``, so ties are broken at random and reproducibly.
    """
    n, c, h, w = probs.shape
    fg = probs[:, 1:].float()                                                  # (N,K,S,S)
    masks = (F.one_hot(probs.argmax(1), c)[..., 1:].permute(0, 3, 1, 2).bool()) & (fg >= thresh)
    boxes, valid = masks_to_boxes(masks)
    score = torch.where(masks, fg, torch.full_like(fg, -1.0)).flatten(2)       # (N,K,HW), -1 outside the mask
    perm = torch.randperm(h * w, generator=generator).to(probs.device)
    order = torch.sort(score[..., perm], dim=-1, descending=True, stable=True).indices[..., :num_points]
    idx = perm[order]                                                          # (N,K,P) flat pixel indices
    inside = score.gather(-1, idx) >= 0
    points = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).float()
    points = torch.where(inside[..., None], points, torch.zeros_like(points))
    labels = torch.where(inside, 1, -1).to(torch.int32)
    return Prompts(boxes=boxes, points=points, point_labels=labels, valid=valid)


def largest_component_boxes(labels: torch.Tensor, k: int, bbox_shift: int) -> Prompts:
    """SAM-Match's box prompts: for each image and class 1..K of a label map (N,S,S) int64, the bounding box of
    its largest connected piece (8-connected in the slice; largest by box area, as ``get_bbox256_cv``'s largest
    external contour) widened by ``bbox_shift`` pixels on every side and clipped to the image; no point. A class
    absent from the image is not prompted. One connected-component call for the whole batch (scipy, on the host).
    """
    n, h, w = labels.shape
    onehot = F.one_hot(labels.long(), k + 1)[..., 1:].permute(0, 3, 1, 2).reshape(n * k, h, w).cpu().numpy()
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True                                          # 8-connected within a slice, never across
    comp, num = ndimage.label(onehot, structure=structure)
    boxes = np.zeros((n * k, 4), dtype=np.float32)
    if num:
        objs = ndimage.find_objects(comp)                        # (plane, rows, cols) slices of each piece
        b = np.array([[o[0].start, o[2].start, o[1].start, o[2].stop, o[1].stop] for o in objs], dtype=np.int64)
        area = (b[:, 3] - b[:, 1]) * (b[:, 4] - b[:, 2])
        order = np.lexsort((-area, b[:, 0]))                     # per plane, the largest box first
        first = np.unique(b[order, 0], return_index=True)[1]
        best = b[order[first]]
        boxes[best[:, 0]] = best[:, 1:]
    boxes = torch.from_numpy(boxes).to(labels.device).view(n, k, 4)
    valid = torch.from_numpy(onehot.reshape(n * k, -1).any(1)).to(labels.device).view(n, k)
    pad = boxes.new_tensor([-bbox_shift, -bbox_shift, bbox_shift, bbox_shift])
    bounds = boxes.new_tensor([w, h, w, h])
    boxes = torch.where(valid[..., None], torch.minimum((boxes + pad).clamp_min(0), bounds), torch.zeros_like(boxes))
    points = boxes.new_zeros(n, k, 1, 2)
    return Prompts(boxes=boxes, points=points, point_labels=torch.full((n, k, 1), -1, dtype=torch.int32,
                                                                            device=labels.device), valid=valid)


def interior_point_prompts(probs: torch.Tensor) -> Prompts:
    """SemiSAM's point prompts: one positive click per class of the student's argmax map (probs (N,K+1,S,S)), at
    the most interior pixel of the class's mask (the first click SemiSAM's click simulator places, deep inside
    the target: :func:`sam2_train.model.prompts.interior_points`); no box. A class absent from the argmax is not
    prompted."""
    n, c = probs.shape[:2]
    masks = F.one_hot(probs.argmax(1), c)[..., 1:].permute(0, 3, 1, 2).bool()       # (N,K,S,S)
    valid = masks.flatten(2).any(-1)
    points = interior_points(masks)[:, :, None]                                    # (N,K,1,2) pixel indices
    labels = torch.where(valid, 1, -1).to(torch.int32)[..., None]
    return Prompts(boxes=points.new_zeros(n, c - 1, 4), points=points, point_labels=labels, valid=valid,
                        use_box=False)


class SAMGuide:
    """A SAM-2 at its own input size, held outside the student's module tree: it is never averaged into the
    EMA or wrapped by DDP. Frozen (eval mode, ``requires_grad=False``) unless ``trainable`` (SAM-Match's
    ``-guide_train 1``: then its weights and optimiser state are saved with the run, see the trainer)."""

    def __init__(self, sam: SAM2Seg, autocast, trainable: bool = False):
        self.sam, self.autocast, self.trainable = sam, autocast, bool(trainable)
        self.sam.train(self.trainable).requires_grad_(self.trainable)

    @property
    def image_size(self) -> int:
        return self.sam.image_size

    def forward(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """images (N,1,S,S) in [0,1], prompts in the images' pixels -> SAM-2's mask logits (N,K,S,S) on the
        images' grid: the images are resized to the guide's size (bilinear, as the data pipeline resizes), the
        prompts scaled with them (:meth:`Prompts.scaled`) and SAM-2's low-res masks resized back (bilinear).
        Every class of every image in one decoder call; unprompted classes get a large negative logit. Autograd
        follows the caller (see :meth:`masks`)."""
        size, g = images.shape[-1], self.image_size
        x = resize_image(images.float(), g).clamp(0, 1) if size != g else images
        p = prompts.scaled(size, g)
        with self.autocast():
            out = self.sam.decode(self.sam.encode(x), boxes=p.boxes if p.use_box else None, box_valid=p.valid,
                                  points=p.points, point_labels=p.point_labels)
        return mask_unprompted(upsample(out.masks.float(), images.shape[-2:]), prompts.valid)

    def masks(self, images: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """:meth:`forward` without autograd (labels and inference); with autograd only for a trainable guide in
        a grad-enabled context (SAM-Match's fine-tuning)."""
        with contextlib.nullcontext() if self.trainable and torch.is_grad_enabled() else torch.no_grad():
            return self.forward(images, prompts)


def sam_labels(logits: torch.Tensor, valid: torch.Tensor, student_probs: torch.Tensor):
    """SAM-2's masks as a label map: logits (N,K,S,S), valid (N,K), the student's probs (N,K+1,S,S) -> labels
    (N,S,S) int64 (argmax of the prompted classes' logits, background where none is > 0) and confidence
    (N,S,S) in [0,1] (sigmoid of the label's logit; on background, one minus the highest class probability,
    the student's where SAM-2 was not prompted), :func:`sam2_train.model.labels.pseudo_labels` without fusion."""
    return pseudo_labels(logits, valid, student_probs, fuse=False)


def build_sam_guide(sam_config: str, sam_ckpt: str, guide_size: int, device, autocast,
                    trainable: bool = False) -> SAMGuide:
    """The SAM-2 of ``-sam_config``/``-sam_ckpt`` (``"none"``: random weights) at ``guide_size`` (``-guide_size``)."""
    sam = SAM2Seg(build_sam2_base(sam_config, sam_ckpt, guide_size, device="cpu")).to(device)
    return SAMGuide(sam, autocast, trainable=trainable)
