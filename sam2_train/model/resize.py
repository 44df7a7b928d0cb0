"""The resize rules of images and label maps, one place for training and inference.

Images go to the model size with :func:`resize_image` (bilinear, antialiased when shrinking), in the data
pipeline, at inference and for the SAM-2 guide alike; label maps with :func:`resize_label` (nearest).
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
