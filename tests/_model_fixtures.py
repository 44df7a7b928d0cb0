"""Shared helpers for tests/test_model.py: tiny random SAM-2 models with informative outputs."""
from __future__ import annotations

import os
import warnings

import torch

from sam2_train.model.build import build_sam2_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_CFG = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")
S = 64  # test image size (multiple of 32)


def make_informative(sam: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make a random-init SAM-2 produce non-trivial outputs (same edit for every copy that shares the weights).

    - object-score head bias +8: objects are "present", so SAM-2 does not replace masks by -1024 and the
      tracked masks, memories and object pointers carry information (and gradients);
    - mask hypernetwork output layers x30: mask logits of order +-10 instead of +-0.3, so masks have both
      signs and parity tolerances are meaningful.
    """
    with torch.no_grad():
        dec = sam.sam_mask_decoder
        dec.pred_obj_score_head.layers[-1].bias.fill_(8.0)
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(30.0)
    return sam


def build_tiny(image_size: int = S, seed: int = 0, overrides=()):
    """Tiny test config, random init (seeded), informative outputs, train mode, CPU."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sam = build_sam2_base(TEST_CFG, None, image_size, hydra_overrides_extra=list(overrides))
    return make_informative(sam)


def smooth_frames(n: int, size: int = S, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) float in [0, 1]: smooth random blobs that change slowly from frame to frame."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, size // 8, size // 8, generator=g)
    drift = torch.rand(1, 3, size // 8, size // 8, generator=g)
    t = torch.linspace(0, 1, n).view(n, 1, 1, 1)
    low = base * (1 - 0.5 * t) + drift * 0.5 * t
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
