"""The label rules of SSS: label maps from refined masks, the teacher's pseudo-labels and confidences, the fusion
of the coarse head with SAM-2, and the body mask PCSW keeps its prompts in. Shapes: N images, K foreground classes,
h x w the coarse / low-res grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def body_mask(images: torch.Tensor, s: int, thresh: float = 0.02) -> torch.Tensor:
    """(N,1,S,S) images -> (N,s,s) bool: coarse cells holding any tissue (PCSW keeps prompts inside)."""
    return F.adaptive_max_pool2d(images[:, 0:1].float(), s)[:, 0] > thresh


NEG = -1e4  # logit given to objects without a prompt (float32/bf16-safe "minus infinity")


def mask_unprompted(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """logits (...,K,h,w), valid (...,K) -> logits with unprompted objects set to NEG (no gradient there)."""
    return torch.where(valid[..., None, None], logits, logits.new_full((), NEG))


def labels_from_refined(logits: torch.Tensor) -> torch.Tensor:
    """Label map rule of SSS: argmax over classes, background where no class logit is > 0.

    logits (...,K,h,w) -> labels (...,h,w) int64 in 0..K.
    """
    best, idx = logits.max(dim=-3)
    return torch.where(best > 0, idx + 1, torch.zeros_like(idx))


def pseudo_labels(refined: torch.Tensor, valid: torch.Tensor, coarse_probs: torch.Tensor,
                  fallback: torch.Tensor | None = None, tau_fallback: float = 0.0, fuse: bool = False):
    """Teacher targets from refined masks: labels (N,s,s) and confidence (N,s,s) in [0,1].

    ``fuse`` (SSS's rule, ``-pcsw_fuse 1``, the same as at inference): labels and confidences are the argmax and
    maximum of :func:`fuse_probs`, the average of the coarse head and SAM-2 on prompted classes. Without
    ``fuse`` (the paper's rule): labels from the refined logits alone (:func:`labels_from_refined`); a prompted
    class contributes sigmoid(refined logit), a class without a prompt on that slice falls back on the coarse
    head's probability. The confidence of a foreground label is the probability of that label; of background,
    one minus the highest class probability, so pixels the coarse head puts in a rejected class stay uncertain
    instead of becoming confident background.
    Pixels labeled with a class whose prompt is a PCSW fallback (``fallback`` (N,K) bool) get a stricter
    threshold: their confidence is set to 0 where it is below ``tau_fallback``, so that any later threshold
    ``tau_u <= tau_fallback`` drops them.
    refined (N,K,s,s), valid (N,K), coarse_probs (N,K+1,s,s).
    """
    if fuse:
        conf, labels = fuse_probs(coarse_probs, refined, valid).max(dim=1)
    else:
        p_fg = torch.where(valid[..., None, None], torch.sigmoid(refined.float()), coarse_probs[:, 1:].float())
        labels = labels_from_refined(torch.where(valid[..., None, None], refined.float(), refined.new_full((), NEG)))
        p_label = p_fg.gather(1, (labels - 1).clamp_min(0)[:, None])[:, 0]         # probability of the label
        conf = torch.where(labels > 0, p_label, 1.0 - p_fg.max(dim=1).values)
    if fallback is not None:
        fb = (fallback & valid).gather(1, (labels - 1).clamp_min(0).flatten(1)).view_as(labels) & (labels > 0)
        conf = torch.where(fb & (conf < tau_fallback), torch.zeros_like(conf), conf)
    return labels, conf


def fuse_probs(coarse_probs: torch.Tensor, refined: torch.Tensor, prompted: torch.Tensor) -> torch.Tensor:
    """Fusion rule of SSS (``-pcsw_fuse 1``): class probabilities of the coarse head and SAM-2 together.

    coarse_probs (N,K+1,h,w) softmax, refined (N,K,h,w) SAM-2 mask logits, prompted (N,K) bool (or (1,K),
    broadcast) -> (N,K+1,h,w). A prompted class k gets the average of the coarse probability and
    sigmoid(refined_k); a class without a prompt keeps the coarse probability; background keeps the remaining
    mass, max(0, 1 - sum of the classes). Without any prompt this is the coarse head itself, so the label map
    (the argmax) never loses a class the coarse head finds, and SAM-2 moves every prompted boundary halfway."""
    c = coarse_probs.float()
    sam = torch.sigmoid(refined.float())
    fg = torch.where(prompted[..., None, None], 0.5 * (c[:, 1:] + sam), c[:, 1:])
    return torch.cat([(1.0 - fg.sum(1, keepdim=True)).clamp_min(0.0), fg], 1)
