"""A frozen SAM-2 that labels images from a student's prediction (Knowledge Mining, SemiSAM, SAM-Match).

The student's class probabilities become prompts (:func:`box_point_prompts`: the outer box of each class's
thresholded mask plus its ``num_points`` most probable pixels, Knowledge Mining's rule; no mask prompt) and
:class:`SAMGuide` decodes every class of every image in one decoder call, without autograd, in bf16 on CUDA.
:func:`sam_labels` turns SAM-2's masks into a label map. Shapes: N images, K foreground classes, S image size
(the student's and SAM-2's input), P points per class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam2_train.model.build import build_sam2_base
from sam2_train.model.prompts import masks_to_boxes
from sam2_train.model.sam2_model import SAM2Seg
from sam2_train.model.sss_net import mask_unprompted, pseudo_labels, upsample


@dataclass
class GuidePrompts:
    """Per-image, per-class prompts in model-input pixels (the frame of :class:`sss_net.SlicePrompts`): boxes
    (N,K,4) xyxy (max corner exclusive), points (N,K,P,2) xy pixel indices, point_labels (N,K,P) int32 (1
    positive, -1 padding), valid (N,K) bool (the class has a prompt)."""
    boxes: torch.Tensor
    points: torch.Tensor
    point_labels: torch.Tensor
    valid: torch.Tensor

    def __getitem__(self, rows) -> "GuidePrompts":
        """The prompts of the images ``rows`` (an index or slice of N)."""
        return GuidePrompts(self.boxes[rows], self.points[rows], self.point_labels[rows], self.valid[rows])


def box_point_prompts(probs: torch.Tensor, *, thresh: float = 0.5, num_points: int = 1,
                      generator: torch.Generator | None = None) -> GuidePrompts:
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
    return GuidePrompts(boxes=boxes, points=points, point_labels=labels, valid=valid)


class SAMGuide:
    """A frozen SAM-2 (eval mode, ``requires_grad=False``), held outside the student's module tree: it is
    never trained, averaged into the EMA, saved in a checkpoint or wrapped by DDP."""

    def __init__(self, sam: SAM2Seg, autocast):
        self.sam, self.autocast = sam.eval().requires_grad_(False), autocast

    @property
    def image_size(self) -> int:
        return self.sam.image_size

    @torch.no_grad()
    def masks(self, images: torch.Tensor, prompts: GuidePrompts) -> torch.Tensor:
        """images (N,1,S,S) in [0,1] -> SAM-2's mask logits (N,K,S,S) at the input size, every class of every
        image in one decoder call; unprompted classes get a large negative logit."""
        with self.autocast():
            out = self.sam.decode(self.sam.encode(images), boxes=prompts.boxes, box_valid=prompts.valid,
                                  points=prompts.points, point_labels=prompts.point_labels)
        return mask_unprompted(upsample(out.masks.float(), images.shape[-2:]), prompts.valid)


def sam_labels(logits: torch.Tensor, valid: torch.Tensor, student_probs: torch.Tensor):
    """SAM-2's masks as a label map: logits (N,K,S,S), valid (N,K), the student's probs (N,K+1,S,S) -> labels
    (N,S,S) int64 (argmax of the prompted classes' logits, background where none is > 0) and confidence
    (N,S,S) in [0,1] (sigmoid of the label's logit; on background, one minus the highest class probability,
    the student's where SAM-2 was not prompted), :func:`sss_net.pseudo_labels` without fusion."""
    return pseudo_labels(logits, valid, student_probs, fuse=False)


def build_sam_guide(sam_config: str, sam_ckpt: str, image_size: int, device, autocast) -> SAMGuide:
    """The frozen SAM-2 of ``-sam_config``/``-sam_ckpt`` at ``image_size`` (``"none"``: random weights)."""
    return SAMGuide(SAM2Seg(build_sam2_base(sam_config, sam_ckpt, image_size, device="cpu")).to(device), autocast)
