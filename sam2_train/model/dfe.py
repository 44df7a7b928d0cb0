"""Discriminative Feature Enhancement (DFE).

DFE takes the multi-scale image features of a weak view ``W`` and a strong view ``S`` of the same
(pixel-aligned) image and rebuilds both from what the two views agree on (a gated fusion ``F``) and
where they disagree (a discrepancy ``D``). At each selected level ``l`` with ``C_l`` channels:

* ``phi``   -- one 3x3 conv ``C_l -> C_l`` shared by the two views;
* ``sigma`` -- similarity of ``phi(W)`` and ``phi(S)``: the cosine over channels at every pixel
  (``sim="pixel"``, shape ``(B, 1, H, W)``) or the cosine of the globally average-pooled features
  (``sim="global"``, the authors' sketch, shape ``(B, 1, 1, 1)``);
* ``g = sigmoid(a * sigma + b)`` -- a learned affine gate (scalars ``a = 1``, ``b = 0`` at init);
* ``M``     -- a per-pixel MLP: 1x1 conv ``C -> 2C``, LayerNorm over channels, ReLU, 1x1 conv ``2C -> C``;
* ``F = g * M(phi(W)) + (1 - g) * M(phi(S))`` and ``D = (1 - sigma) * (phi(S) - phi(W))``;
* ``W' = W + gamma * (F - D)`` and ``S' = S + gamma * (F + D)``, ``gamma`` a learnable scalar per level
  (or one value per channel, ``gamma_per_channel=True``) initialised to 0, so DFE is exactly the
  identity at initialisation and a pretrained SAM-2 starts unchanged.

Levels not listed in ``levels`` pass through unchanged (the same tensor objects are returned).

Batching: the strong views may be passed concatenated along the batch, e.g. ``feats_s[l]`` of shape
``(r*B, C, H, W)`` = ``cat([S1, S2])`` with ``feats_w[l]`` of shape ``(B, C, H, W)``. ``W`` is then
paired with each strong view in that order (``W`` is tiled ``r`` times; ``phi(W)`` and ``M(phi(W))``
are computed once on the ``B`` weak images and tiled). Both outputs then have batch ``r*B``: row
``j*B + i`` of ``W'`` is the weak image ``i`` enhanced with strong view ``j``.

Labeled and test images (``feats_s=None``): ``S = W``, hence ``sigma = 1``, ``D = 0`` and ``F = M(phi(W))``
(the two gate branches are equal). The shortcut computes ``W' = W + gamma * M(phi(W))`` directly -- the same
operator as the two-view path with ``S = W`` (up to float rounding), at half the cost -- and returns the
same list twice, ``(W', W')``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# Channels of SAM-2's multi-scale image features (with use_high_res_features_in_sam): 1/4, 1/8, 1/16.
SAM2_CHANNELS = (32, 64, 256)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` tensor, per pixel (as SAM-2's LayerNorm2d).

    Computed in fp32 whatever the input dtype (under bf16 autocast the mean and variance of bf16 inputs lose
    the per-pixel spread), and returned in the input's dtype."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        u = x32.mean(1, keepdim=True)
        s = (x32 - u).pow(2).mean(1, keepdim=True)
        y = (x32 - u) * torch.rsqrt(s + self.eps)
        return (y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]).to(x.dtype)


class DFELevel(nn.Module):
    """DFE at one feature level with ``channels`` channels (see the module docstring)."""

    def __init__(self, channels: int, sim: str = "pixel", hidden_mult: int = 2, gamma_per_channel: bool = False):
        super().__init__()
        if sim not in ("pixel", "global"):
            raise ValueError(f"sim must be 'pixel' or 'global', got {sim!r}")
        self.sim = sim
        self.phi = nn.Conv2d(channels, channels, 3, padding=1)
        hidden = hidden_mult * channels
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), LayerNorm2d(hidden), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1))
        self.gate_a = nn.Parameter(torch.ones(1))
        self.gate_b = nn.Parameter(torch.zeros(1))
        self.gamma = nn.Parameter(torch.zeros(1, channels if gamma_per_channel else 1, 1, 1))

    def similarity(self, pw: torch.Tensor, ps: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of projected features ``(N, C, H, W)`` -> ``(N, 1, H, W)`` (pixel) or ``(N, 1, 1, 1)``
        (global).

        Computed in fp32 (safe under bf16 autocast) and returned in ``pw``'s dtype.
        """
        pw32, ps32 = pw.float(), ps.float()
        if self.sim == "global":
            pw32, ps32 = pw32.mean((2, 3), keepdim=True), ps32.mean((2, 3), keepdim=True)
        return F.cosine_similarity(pw32, ps32, dim=1, eps=1e-6).unsqueeze(1).to(pw.dtype)

    def forward(self, w: torch.Tensor, s: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``w``: ``(B, C, H, W)``; ``s``: ``(r*B, C, H, W)`` or None -> ``(W', S')``, each ``(r*B, C, H, W)``
        (``(B, C, H, W)`` and ``W' is S'`` when ``s`` is None)."""
        pw = self.phi(w)
        mw = self.mlp(pw)
        if s is None:
            out = w + self.gamma * mw
            return out, out
        b = w.shape[0]
        if s.shape[1:] != w.shape[1:] or s.shape[0] % b:
            raise ValueError(f"strong-view features {tuple(s.shape)} do not match weak-view features {tuple(w.shape)}"
                             " (the strong batch must be a multiple of the weak batch)")
        r = s.shape[0] // b
        ps = self.phi(s)
        ms = self.mlp(ps)
        if r > 1:  # pair W with each strong view: tile along the batch, no recomputation
            w, pw, mw = (t.repeat(r, 1, 1, 1) for t in (w, pw, mw))
        sigma = self.similarity(pw, ps)
        g = torch.sigmoid(self.gate_a * sigma + self.gate_b)
        fused = g * mw + (1 - g) * ms
        disc = (1 - sigma) * (ps - pw)
        return w + self.gamma * (fused - disc), s + self.gamma * (fused + disc)


class DFE(nn.Module):
    """Multi-scale DFE on SAM-2 feature lists.

    Args:
        channels: channels of every level of the feature list (SAM-2: ``(32, 64, 256)``).
        levels: the levels enhanced (default all); others pass through unchanged.
        sim: "pixel" (per-pixel cosine) or "global" (cosine of pooled features).
        hidden_mult: hidden width of the per-pixel MLP, in multiples of ``C``.
        gamma_per_channel: one residual scale per channel instead of one per level.

    ``forward(feats_w, feats_s=None)``:
        feats_w: list of ``(B, C_l, H_l, W_l)`` (SAM-2: ``(B,32,S/4,S/4)``, ``(B,64,S/8,S/8)``, ``(B,256,S/16,S/16)``).
        feats_s: None, or a list of ``(r*B, C_l, H_l, W_l)`` (``r`` strong views concatenated along the batch).
        Returns ``(feats_w', feats_s')``: lists of ``(r*B, C_l, H_l, W_l)`` tensors; with ``feats_s=None``
        a list of ``(B, C_l, H_l, W_l)`` returned twice (the same list object).
    """

    def __init__(self, channels: Sequence[int] = SAM2_CHANNELS, levels: Sequence[int] = (0, 1, 2),
                 sim: str = "pixel", hidden_mult: int = 2, gamma_per_channel: bool = False):
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.levels = tuple(sorted(set(int(l) for l in levels)))
        for l in self.levels:
            if not 0 <= l < len(self.channels):
                raise ValueError(f"DFE level {l} out of range for {len(self.channels)} feature levels")
        self.sim = sim
        self.blocks = nn.ModuleDict({str(l): DFELevel(self.channels[l], sim, hidden_mult, gamma_per_channel)
                                     for l in self.levels})

    def forward(self, feats_w: list[torch.Tensor], feats_s: list[torch.Tensor] | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if len(feats_w) != len(self.channels):
            raise ValueError(f"expected {len(self.channels)} feature levels, got {len(feats_w)}")
        if feats_s is None:
            out = [self.blocks[str(l)](f)[0] if str(l) in self.blocks else f for l, f in enumerate(feats_w)]
            return out, out
        if len(feats_s) != len(feats_w):
            raise ValueError(f"weak and strong feature lists differ in length: {len(feats_w)} vs {len(feats_s)}")
        out_w, out_s = [], []
        for l, (w, s) in enumerate(zip(feats_w, feats_s)):
            if str(l) in self.blocks:
                w2, s2 = self.blocks[str(l)](w, s)
            else:
                r = s.shape[0] // w.shape[0]
                w2, s2 = (w.repeat(r, 1, 1, 1) if r > 1 else w), s
            out_w.append(w2)
            out_s.append(s2)
        return out_w, out_s
