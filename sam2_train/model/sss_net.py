"""SSSNet: SAM-2 + DFE + coarse head in one module, and the label/pseudo-label rules of SSS.

Everything trainable lives in one ``nn.Module`` so that one state dict, one EMA copy and one DDP wrapper
cover it. Shapes: B images, K foreground classes, S = image size, s = S/4 (coarse and low-res mask size).
The ``sss.*`` ``record_function`` scopes (free when no profiler runs) let ``bench/bench_train.py`` split
a step into encoder, DFE, head, PCSW and decoder time (the 3D step adds ``sss.track`` around SAM-2 tracking
and both steps ``sss.loss``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from sam2_train.model.build import build_sam2_base
from sam2_train.model.coarse_head import CoarseHead
from sam2_train.model.dfe import DFE
from sam2_train.model.levers import enable_grad_checkpointing
from sam2_train.model.pcsw import PCSWConfig, coarse_box_prompts, pcsw_prompts
from sam2_train.model.sam2_model import SAM2Seg

# The architecture is fixed by these flags; a checkpoint records them and refuses to load under others.
ARCH_KEYS = ("sam_config", "image_size", "num_classes", "dfe", "dfe_sim", "dfe_levels")


@dataclass
class SlicePrompts:
    """Per-slice, per-class prompts in image pixels: ``boxes (N,K,4)`` xyxy, ``points (N,K,2)`` xy,
    ``valid (N,K)`` bool, ``masks (N,K,s,s)`` bool (the accepted component, for CutMix-consistent prompts)."""
    boxes: torch.Tensor
    points: torch.Tensor
    valid: torch.Tensor
    masks: torch.Tensor | None = None


class SSSNet(nn.Module):
    """SAM-2 image encoder + DFE + coarse head + SAM-2 prompt encoder/mask decoder (+ memory in 3D)."""

    def __init__(self, sam: SAM2Seg, num_classes: int, dfe: DFE | None):
        super().__init__()
        self.sam = sam
        self.num_classes = num_classes
        self.dfe = dfe
        self.head = CoarseHead(num_classes)

    @property
    def image_size(self) -> int:
        return self.sam.image_size

    def encode(self, images: torch.Tensor):
        """images (B,1|3,S,S) in [0,1] -> ImageFeatures (3 levels, no memory added)."""
        with record_function("sss.encoder"):
            return self.sam.encode(images)

    def enhance(self, feats_w: list[torch.Tensor], feats_s: list[torch.Tensor] | None = None):
        """DFE(W, S) -> (W', S'); with ``feats_s=None`` DFE(W=W) (labeled/test images). Identity without DFE."""
        if self.dfe is None:
            return feats_w, (feats_s if feats_s is not None else feats_w)
        with record_function("sss.dfe"):
            return self.dfe(feats_w, feats_s)

    def coarse(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Coarse class logits (B,K+1,s,s)."""
        with record_function("sss.head"):
            return self.head(feats)

    def refine(self, feats: list[torch.Tensor], prompts: SlicePrompts) -> torch.Tensor:
        """SAM-2 decoder with one object per class: refined mask logits (B,K,s,s); unprompted objects -> -inf-like."""
        click_labels = prompts.valid.to(torch.int32) * 2 - 1                 # 1 positive, -1 padding
        with record_function("sss.decoder"):
            out = self.sam.decode(feats, boxes=prompts.boxes, box_valid=prompts.valid,
                                  points=prompts.points.unsqueeze(2), point_labels=click_labels.unsqueeze(2))
            return mask_unprompted(out.masks, prompts.valid)


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


def pseudo_labels(refined: torch.Tensor, valid: torch.Tensor, coarse_probs: torch.Tensor):
    """Teacher targets from refined masks: labels (N,s,s) and confidence (N,s,s) in [0,1].

    A prompted class contributes sigmoid(refined logit); a class without a prompt on that slice falls back
    on the coarse head's probability, so pixels the coarse head puts in a rejected class stay uncertain
    instead of becoming confident background.
    refined (N,K,s,s), valid (N,K), coarse_probs (N,K+1,s,s).
    """
    p_fg = torch.where(valid[..., None, None], torch.sigmoid(refined.float()), coarse_probs[:, 1:].float())
    labels = labels_from_refined(torch.where(valid[..., None, None], refined.float(), refined.new_full((), NEG)))
    p_max, _ = p_fg.max(dim=1)
    conf = torch.where(labels > 0, p_max, 1.0 - p_max)
    return labels, conf


def prompts_from_probs(probs: torch.Tensor, image_size: int, cfg: PCSWConfig, use_pcsw: bool,
                       body: torch.Tensor | None = None) -> SlicePrompts:
    """Prompts for slabs of slices from coarse class probabilities.

    probs (N,D,K+1,s,s) -> SlicePrompts with leading dim N*D. PCSW when ``use_pcsw`` else the
    unconstrained per-slice boxes of the coarse argmax (the ``-pcsw 0`` ablation).
    """
    n, d = probs.shape[:2]
    with record_function("sss.pcsw"):
        p = pcsw_prompts(probs, body, cfg) if use_pcsw else coarse_box_prompts(probs, margin=cfg.margin)
    boxes, points = p.scale_to(image_size)
    flat = lambda t: t.reshape(n * d, *t.shape[2:])  # noqa: E731
    return SlicePrompts(boxes=flat(boxes), points=flat(points), valid=flat(p.valid), masks=flat(p.masks))


def build_sss_net(args: argparse.Namespace, num_classes: int, device="cpu", sam_ckpt: str | None = None) -> SSSNet:
    """Build the model of ``args`` (SAM-2 from -sam_config/-sam_ckpt at -image_size, DFE if -dfe).

    ``sam_ckpt`` overrides ``args.sam_ckpt`` (``"none"`` when the weights come from our own checkpoint).
    For volumes (``args.script == "3d"``) SAM-2 attends to at most ``-memory_bank_size`` conditioning
    (prompted) frames (``max_cond_frames_in_attn``; no weights depend on it). ``-encoder_lr_mult 0`` freezes
    the image encoder (``requires_grad=False``: no gradient, no backward through it, not in the optimiser);
    ``-grad_ckpt 1`` checkpoints its Hiera blocks (:mod:`sam2_train.model.levers`)."""
    overrides = []
    if getattr(args, "script", "2d") == "3d" and getattr(args, "memory_bank_size", None):
        overrides.append(f"++model.max_cond_frames_in_attn={int(args.memory_bank_size)}")
    sam = SAM2Seg(build_sam2_base(args.sam_config, sam_ckpt or args.sam_ckpt, args.image_size, device="cpu",
                                  hydra_overrides_extra=overrides))
    dfe = DFE(levels=tuple(args.dfe_levels), sim=args.dfe_sim) if args.dfe else None
    if getattr(args, "encoder_lr_mult", 1.0) == 0:
        sam.sam.image_encoder.requires_grad_(False)
    if getattr(args, "grad_ckpt", False):
        enable_grad_checkpointing(sam.sam.image_encoder)
    return SSSNet(sam, num_classes, dfe).to(device)


def upsample(logits: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B,C,h,w) logits to ``size``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
