"""The resize rules of images and label maps, one place for training and inference.

Images go to the model size with :func:`resize_image` (bilinear, antialiased when shrinking), in the data
pipeline, at inference and for the SAM-2 guide alike; label maps with :func:`resize_label` (nearest). Predictions
go back to a volume's native size by the evaluation protocol's rule (:func:`probs_to_labels`,
:func:`logits_to_labels`): ``ssl4mis`` (SSL4MIS/BCP/ABD) takes the labels at the model size and resizes them with
nearest neighbour, ``unimatch`` resizes the scores bilinearly to the native size and takes the argmax there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


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


def upsample(logits: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B,C,h,w) logits to ``size``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def labels_to_native(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(D,S,S) int labels at the model size -> (D,H,W) by nearest neighbour (the SSL4MIS rule)."""
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def probs_to_labels(probs: torch.Tensor, size: tuple[int, int], model_size: int, protocol: str) -> torch.Tensor:
    """(D,K+1,s,s) class probabilities (coarse, fused or a student's) -> (D,H,W) argmax labels at the native
    ``size`` by the protocol's rule (see the module docstring)."""
    if protocol == "unimatch":
        return upsample(probs, size).argmax(1)
    return labels_to_native(upsample(probs, (model_size, model_size)).argmax(1), size)


def logits_to_labels(refined: torch.Tensor, size: tuple[int, int], model_size: int, protocol: str) -> torch.Tensor:
    """(D,K,s,s) refined mask logits -> (D,H,W) labels (:func:`sam2_train.model.labels.labels_from_refined`:
    background where no class logit is > 0) at the native ``size`` by the protocol's rule."""
    from sam2_train.model.labels import labels_from_refined
    if protocol == "unimatch":
        return labels_from_refined(upsample(refined, size))
    return labels_to_native(labels_from_refined(upsample(refined, (model_size, model_size))), size)
