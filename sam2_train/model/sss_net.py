"""SSSNet: SAM-2 + DFE + coarse head in one module (the network only; its label rules are
:mod:`sam2_train.model.labels`, its prompts :mod:`sam2_train.model.pcsw`).

Everything trainable lives in one ``nn.Module`` so that one state dict, one EMA copy and one DDP wrapper
cover it. Shapes: B images, K foreground classes, S = image size, s = S/4 (coarse and low-res mask size).
The ``sss.*`` ``record_function`` scopes (free when no profiler runs) let ``bench/bench_train.py`` split
a step into encoder, DFE, head, PCSW and decoder time (the 3D step adds ``sss.track`` around SAM-2 tracking
and both steps ``sss.loss``).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from sam2_train.model.build import build_sam2_base
from sam2_train.model.coarse_head import CoarseHead
from sam2_train.model.dfe import DFE
from sam2_train.model.levers import enable_grad_checkpointing
from sam2_train.model.labels import mask_unprompted
from sam2_train.model.pcsw import PCSWConfig
from sam2_train.model.prompts import Prompts
from sam2_train.model.sam2_model import SAM2Seg

class SSSNet(nn.Module):
    """SAM-2 image encoder + DFE + coarse head + SAM-2 prompt encoder/mask decoder (+ memory in 3D)."""

    def __init__(self, sam: SAM2Seg, num_classes: int, dfe: DFE | None):
        super().__init__()
        self.sam = sam
        self.num_classes = num_classes
        self.dfe = dfe
        self.head = CoarseHead(num_classes)
        # calibrated PCSW gate per class (-1: not observed yet); see update_class_conf
        self.register_buffer("class_conf", torch.full((num_classes,), -1.0))

    @torch.no_grad()
    def update_class_conf(self, probs: torch.Tensor, labels: torch.Tensor, momentum: float = 0.99) -> None:
        """EMA of each class's mean coarse probability on its ground-truth pixels (the PCSW gate calibration).

        probs (B,K+1,s,s) softmax of the coarse head, labels (B,H,W) int64 ground truth (nearest-resized to s).
        A class absent from the batch, or with a non-finite mean (a diverged step, skipped by the trainer's guard),
        keeps its value; the first observation of a class sets it. Under DDP the statistics of all ranks are
        summed (a collective: every rank's labeled step calls it)."""
        k, s = self.num_classes, probs.shape[-1]
        y = F.interpolate(labels[:, None].float(), size=s, mode="nearest")[:, 0].long()
        onehot = F.one_hot(y, k + 1)[..., 1:].permute(0, 3, 1, 2).float()              # (B,K,s,s)
        stats = torch.stack([(probs[:, 1:].float() * onehot).sum((0, 2, 3)), onehot.sum((0, 2, 3))])   # (2,K)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)    # every rank keeps the same gates (DDP broadcasts no update)
        count = stats[1]
        mean = stats[0] / count.clamp_min(1.0)                                          # (K,)
        old = self.class_conf
        new = torch.where(old < 0, mean, momentum * old + (1.0 - momentum) * mean)
        self.class_conf.copy_(torch.where((count > 0) & torch.isfinite(mean), new, old))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the calibration buffer existed load with it uncalibrated (-1)
        state_dict.setdefault(prefix + "class_conf", torch.full((self.num_classes,), -1.0))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def gates(self, cfg: PCSWConfig) -> torch.Tensor | None:
        """The calibrated per-class confidences PCSW uses (``cfg.calibrate``), else None (fixed gates)."""
        return self.class_conf if cfg.calibrate else None

    @property
    def image_size(self) -> int:
        return self.sam.image_size

    def encode(self, images: torch.Tensor):
        """images (B,1|3,S,S) in [0,1] -> ImageFeatures (3 levels, no memory added): :meth:`backbone`, then
        :meth:`project`."""
        with record_function("sss.encoder"):
            return self.sam.encode(images)

    def backbone(self, images: torch.Tensor):
        """images (B,1|3,S,S) in [0,1] -> the image encoder's raw FPN levels (ImageFeatures, 256 channels each),
        before the decoder's conv_s0/conv_s1. With a frozen encoder these are the same in the student and its
        EMA teacher, so one pass can serve both (:meth:`project` then applies each network's own convs)."""
        with record_function("sss.encoder"):
            return self.sam.backbone(images)

    def project(self, raw):
        """This network's conv_s0/conv_s1 on levels 0 and 1 of :meth:`backbone` features -> ImageFeatures."""
        return self.sam.project(raw)

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

    def refine(self, feats: list[torch.Tensor], prompts: Prompts) -> torch.Tensor:
        """SAM-2 decoder with one object per class: refined mask logits (B,K,s,s); unprompted objects -> NEG."""
        with record_function("sss.decoder"):
            out = self.sam.decode(feats, boxes=prompts.boxes, box_valid=prompts.valid, points=prompts.points,
                                  point_labels=prompts.point_labels)
            return mask_unprompted(out.masks, prompts.valid)


def build_sss_net(conf, device="cpu", sam_ckpt: str | None = None) -> SSSNet:
    """Build the model of ``conf``: SAM-2 from ``sam_config``/``sam_ckpt`` at ``image_size``, DFE if ``dfe``.

    ``conf``: :class:`sam2_train.engine.config.ModelConf`. ``sam_ckpt`` overrides ``conf.sam_ckpt`` (``"none"``
    when the weights come from our own checkpoint). SAM-2 attends to at most ``memory_bank_size`` conditioning
    frames (``max_cond_frames_in_attn``; 0: the config's; no weights depend on it). ``freeze_encoder``:
    ``requires_grad=False`` on the image encoder. ``grad_ckpt``: activation checkpointing of its Hiera blocks
    (:mod:`sam2_train.model.levers`)."""
    overrides = []
    if conf.memory_bank_size:
        overrides.append(f"++model.max_cond_frames_in_attn={int(conf.memory_bank_size)}")
    sam = SAM2Seg(build_sam2_base(conf.sam_config, sam_ckpt or conf.sam_ckpt, conf.image_size, device="cpu",
                                  hydra_overrides_extra=overrides))
    dfe = DFE(levels=tuple(conf.dfe_levels), sim=conf.dfe_sim) if conf.dfe else None
    if conf.freeze_encoder:
        sam.sam.image_encoder.requires_grad_(False)
    if conf.grad_ckpt:
        enable_grad_checkpointing(sam.sam.image_encoder)
    return SSSNet(sam, conf.num_classes, dfe).to(device)


