"""Coarse segmentation head H: a light FPN on SAM-2's multi-scale features.

Levels (SAM-2 with high-resolution features, input size S): ``(B,32,S/4,S/4)``, ``(B,64,S/8,S/8)``,
``(B,256,S/16,S/16)``. Each level goes through a 1x1 lateral conv to ``width`` channels; the coarsest is
upsampled (bilinear) and added to the next finer one, down to 1/4; then 3x3 conv + GroupNorm +
ReLU and a 1x1 conv to ``K+1`` class logits of shape ``(B, K+1, S/4, S/4)`` (class 0 = background).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam2_train.model.dfe import SAM2_CHANNELS


class CoarseHead(nn.Module):
    """``forward(feats: list of (B, C_l, H_l, W_l), finest first) -> logits (B, num_classes+1, H_0, W_0)``.

    Args:
        num_classes: K, the number of foreground classes (the output has K+1 channels).
        in_channels: channels of the levels, finest first (SAM-2: ``(32, 64, 256)``).
        width: the common FPN width.
    """

    def __init__(self, num_classes: int, in_channels: Sequence[int] = SAM2_CHANNELS, width: int = 64):
        super().__init__()
        self.num_classes = int(num_classes)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        groups = 8 if width % 8 == 0 else 1
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.GroupNorm(groups, width), nn.ReLU(inplace=True))
        self.cls = nn.Conv2d(width, self.num_classes + 1, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(feats) != len(self.lateral):
            raise ValueError(f"expected {len(self.lateral)} feature levels, got {len(feats)}")
        x = self.lateral[-1](feats[-1])
        for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            x = lat(f) + F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.cls(self.fuse(x))
