"""Lightweight task networks (``-student unet | unetpp``): MONAI's ``BasicUNet`` / ``BasicUNetPlusPlus`` in 2D.

They are the students of the SAM-guided baselines (Knowledge Mining, SemiSAM, SAM-Match) and of the
from-scratch U-Net check; ``-student sam2`` is :class:`sam2_train.model.sss_net.SSSNet`. Shapes: B images,
K foreground classes, S image size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet, BasicUNetPlusPlus

UNET_FEATURES = (16, 32, 64, 128, 256, 16)   # SSL4MIS's U-Net widths (encoder 16..256, last decoder level 16)
SSL4MIS_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)  # SSL4MIS's U-Net: dropout of encoder levels 0..4, none in the decoder
NORM = "batch"                               # SSL4MIS's ConvBlock (BatchNorm2d); U-Net++'s encoders use it too
ACT = ("LeakyReLU", {"negative_slope": 0.01, "inplace": True})   # SSL4MIS's nn.LeakyReLU() (slope 0.01)
_ENCODER_LEVELS = ("conv_0", "down_1", "down_2", "down_3", "down_4")


def set_ssl4mis_dropout(unet: BasicUNet, rates=SSL4MIS_DROPOUT) -> None:
    """SSL4MIS's dropout in a MONAI ``BasicUNet`` built with ``dropout > 0``: in each encoder level one dropout
    between its two convolutions (rate ``rates[level]``), none after the second convolution nor in the decoder.

    SSL4MIS's ConvBlock is conv-BN-LeakyReLU-Dropout-conv-BN-LeakyReLU; MONAI's TwoConv puts a dropout in the ADN
    of each convolution, before the activation, which is the same map (LeakyReLU(c x) = c LeakyReLU(x), c >= 0).
    """
    for module in unet.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    for level, rate in zip(_ENCODER_LEVELS, rates):
        block = getattr(unet, level)
        block = getattr(block, "convs", block)            # Down wraps its TwoConv
        block.conv_0.adn.D.p = float(rate)


class UNetStudent(nn.Module):
    """A 2D U-Net (``kind="unet"``) or U-Net++ with deep supervision (``"unetpp"``): images (B,1,S,S) in [0,1]
    -> class logits (B,K+1,S,S). :meth:`heads` returns every output (U-Net++: its 4 nested decoders, the
    training loss is taken on each); ``forward`` the last, the one that is evaluated.

    Both use BatchNorm and LeakyReLU(0.01) as SSL4MIS's U-Net; the U-Net has SSL4MIS's encoder dropout
    (:func:`set_ssl4mis_dropout`), the U-Net++ none (Knowledge Mining's has none)."""

    def __init__(self, kind: str, num_classes: int, image_size: int, features: tuple[int, ...] = UNET_FEATURES):
        super().__init__()
        if kind not in ("unet", "unetpp"):
            raise ValueError(f"UNetStudent: kind must be unet or unetpp, got {kind!r}")
        self.kind, self.num_classes, self.image_size = kind, int(num_classes), int(image_size)
        args = dict(spatial_dims=2, in_channels=1, out_channels=num_classes + 1, features=tuple(features), norm=NORM,
                    act=ACT)
        if kind == "unet":
            self.net = BasicUNet(**args, dropout=max(SSL4MIS_DROPOUT))
            set_ssl4mis_dropout(self.net)
        else:
            self.net = BasicUNetPlusPlus(**args, deep_supervision=True)
        # channels-last convolutions: oneDNN's fast path on CPU (about 2x with -amp bf16 on AMX cores), cuDNN's
        # for bf16 on tensor cores. Conv weights stay channels-last through .to(device), EMA copies and loading.
        self.net.to(memory_format=torch.channels_last)

    def heads(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every output head: list of (B,K+1,S,S) logits, the evaluated one last."""
        out = self.net(images.contiguous(memory_format=torch.channels_last))
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.heads(images)[-1]
