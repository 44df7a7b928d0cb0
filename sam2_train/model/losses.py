"""Segmentation losses of SSS: multi-class CE + Dice (coarse head, pseudo-labels) and per-object BCE + Dice
(SAM-2 decoder masks, one object per prompted class).

Both losses
* compute in fp32 with autocast disabled (safe when called under bf16 autocast: logits are upcast);
* take an optional ``valid_mask (B, H, W)`` bool: pixels where it is False (e.g. pseudo-label confidence
  below ``tau_u``, padding) are removed from every sum -- changing the logits or the targets there does
  not change the loss (targets may hold any value there, e.g. 255);
* have no Python loop over samples, classes or objects and never call ``.item()``.

Soft Dice uses MONAI's :class:`monai.losses.DiceLoss` on probabilities already multiplied by the valid
mask (MONAI's own ``MaskedDiceLoss`` masks the *logits* before the activation, which would leave ignored
pixels with a uniform softmax; masking the probabilities removes them from the intersection and from both
cardinalities). MONAI's default smoothing ``smooth_nr = smooth_dr = 1e-5`` is kept, so a class/object that
is absent from both prediction and target scores a Dice loss of 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["ce_dice_loss", "bce_dice_loss"]

_SMOOTH = 1e-5


def _valid(valid_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` bool or None -> ``(B, 1, H, W)`` float32 weights."""
    if valid_mask is None:
        return torch.ones(like.shape[0], 1, *like.shape[2:], device=like.device, dtype=torch.float32)
    if valid_mask.shape != (like.shape[0],) + tuple(like.shape[2:]):
        raise ValueError(f"valid_mask must be {(like.shape[0],) + tuple(like.shape[2:])}, "
                         f"got {tuple(valid_mask.shape)}")
    return valid_mask.to(device=like.device, dtype=torch.float32).unsqueeze(1)


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid_mask: torch.Tensor | None = None, *,
                 include_background: bool = True, ce_weight: float = 1.0, dice_weight: float = 1.0,
                 class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Masked multi-class cross-entropy + soft Dice.

    Args:
        logits: ``(B, C, H, W)`` class logits (``C = K + 1``, class 0 = background).
        target: ``(B, H, W)`` long class indices in ``[0, C)`` (any value where ``valid_mask`` is False).
        valid_mask: ``(B, H, W)`` bool or None (all pixels valid).
        include_background: whether the Dice term averages over all ``C`` classes (default, as SSL4MIS and
            UniMatch do) or only the ``K`` foreground classes.
        class_weight: optional ``(C,)`` CE weight per class; CE is then the weighted mean
            ``sum(w[y] * ce) / sum(w[y])`` over valid pixels (as ``F.cross_entropy(weight=...)``).
    Returns:
        scalar ``ce_weight * CE + dice_weight * Dice`` where CE is the mean over valid pixels and Dice is
        ``1 - (2 sum(p*y) + 1e-5) / (sum p + sum y + 1e-5)`` per class with sums over the whole batch
        (MONAI ``batch=True``), averaged over classes. Equals MONAI's ``DiceCELoss(to_onehot_y=True,
        softmax=True, batch=True)`` when nothing is masked. 0 (attached to the graph) if no pixel is valid.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.float()
        C = x.shape[1]
        v = _valid(valid_mask, x)                                  # (B, 1, H, W)
        t = torch.where(v[:, 0] > 0, target.to(x.device).long(), 0)
        wpx = v[:, 0] if class_weight is None else v[:, 0] * class_weight.to(x.device, torch.float32)[t]
        ce = (F.cross_entropy(x, t, reduction="none") * wpx).sum() / wpx.sum().clamp_min(1e-6) if ce_weight else 0.0
        prob = x.softmax(1) * v
        onehot = F.one_hot(t, C).permute(0, 3, 1, 2).float() * v
        dice = DiceLoss(include_background=include_background, batch=True,
                        smooth_nr=_SMOOTH, smooth_dr=_SMOOTH)(prob, onehot)
        return ce_weight * ce + dice_weight * dice


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, object_weight: torch.Tensor | None = None,
                  valid_mask: torch.Tensor | None = None, *, bce_weight: float = 1.0,
                  dice_weight: float = 1.0) -> torch.Tensor:
    """Per-object sigmoid BCE + soft Dice, averaged over the objects that count.

    Args:
        logits: ``(B, K, H, W)`` mask logits, one channel per object (prompted class).
        target: ``(B, K, H, W)`` in {0, 1} (bool/int/float; soft targets in [0, 1] also work).
        object_weight: ``(B, K)`` bool or float: which objects count (and how much); None = all count.
        valid_mask: ``(B, H, W)`` bool or None (shared by the objects of a sample).
    Returns:
        scalar ``sum_o w_o * (bce_weight * BCE_o + dice_weight * Dice_o) / sum_o w_o`` where ``BCE_o`` is the
        mean over the valid pixels of object ``o`` and ``Dice_o = 1 - (2 sum(p*y) + 1e-5) / (sum p + sum y +
        1e-5)`` over its valid pixels (MONAI ``DiceLoss``, ``reduction="none"``). If no object counts the
        result is 0 and still attached to the graph (gradients are zero).
    """
    if logits.dim() != 4 or target.shape != logits.shape:
        raise ValueError(f"logits and target must both be (B, K, H, W), got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.float()
        t = target.to(device=x.device, dtype=torch.float32)
        B, K = x.shape[:2]
        v = _valid(valid_mask, x)                                  # (B, 1, H, W)
        bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        bce = (bce * v).sum((2, 3)) / v.sum((2, 3)).clamp_min(1.0)  # (B, K)
        dice = DiceLoss(reduction="none", smooth_nr=_SMOOTH, smooth_dr=_SMOOTH)(
            torch.sigmoid(x) * v, t * v).reshape(B, K)
        per_obj = bce_weight * bce + dice_weight * dice
        if object_weight is None:
            return per_obj.mean()
        w = object_weight.to(device=x.device, dtype=torch.float32)
        if w.shape != (B, K):
            raise ValueError(f"object_weight must be {(B, K)}, got {tuple(w.shape)}")
        return (per_obj * w).sum() / w.sum().clamp_min(1e-8)
