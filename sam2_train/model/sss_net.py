"""SSSNet: SAM-2 + DFE + coarse head in one module, and the label/pseudo-label rules of SSS.

Everything trainable lives in one ``nn.Module`` so that one state dict, one EMA copy and one DDP wrapper
cover it. Shapes: B images, K foreground classes, S = image size, s = S/4 (coarse and low-res mask size).
The ``sss.*`` ``record_function`` scopes (free when no profiler runs) let ``bench/bench_train.py`` split
a step into encoder, DFE, head, PCSW and decoder time (the 3D step adds ``sss.track`` around SAM-2 tracking
and both steps ``sss.loss``).
"""
from __future__ import annotations

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

@dataclass(frozen=True)
class ModelConf:
    """The architecture and initial weights of an :class:`SSSNet`.

    ``sam_ckpt``: SAM-2 checkpoint path or ``"none"`` (random init). ``memory_bank_size``: volumes only, the
    most prompted (conditioning) frames SAM-2 attends to (None: the config's). ``freeze_encoder``: the image
    encoder gets no gradient and no backward pass (``-encoder_lr_mult 0``). ``grad_ckpt``: activation
    checkpointing of the Hiera blocks (``-grad_ckpt 1``). ``student``: ``sam2`` (this network) or a lightweight
    ``unet``/``unetpp`` (:mod:`sam2_train.model.students`; SAM-2 is then the guide of ``sam_config``/
    ``sam_ckpt``, at ``guide_size``)."""
    sam_config: str
    image_size: int
    num_classes: int
    sam_ckpt: str = "none"
    dfe: bool = True
    dfe_sim: str = "pixel"
    dfe_levels: tuple[int, ...] = (0, 1, 2)
    memory_bank_size: int | None = None
    freeze_encoder: bool = False
    grad_ckpt: bool = False
    student: str = "sam2"
    guide_size: int = 1024


@dataclass
class SlicePrompts:
    """Per-slice, per-class prompts in model-input pixels: ``boxes (N,K,4)`` xyxy, ``points (N,K,2)`` xy,
    ``valid (N,K)`` bool, ``masks (N,K,s,s)`` bool (the accepted component, for CutMix-consistent prompts).

    Coordinate frame (that of SAM-2's prompt encoder, which adds 0.5 to every coordinate itself): a point
    ``(x, y)`` is the (column, row) pixel index of the model input, so ``(5, 7)`` is the centre of the pixel
    in column 5, row 7 and ``(13.5, 21.5)`` the centre of the 4x4 block of pixels 12..15 x 20..23; boxes
    are ``x1, y1, x2, y2`` with the max corner exclusive (``x2 = last column + 1``).

    ``fallback (N,K)`` bool: the prompt is a PCSW fallback (None: none is). ``status (n_slabs,K)`` int64: PCSW's
    per-slab class status (0 not predicted, 1 accepted, 2 fallback, 3 rejected; see ``pcsw.Prompts``)."""
    boxes: torch.Tensor
    points: torch.Tensor
    valid: torch.Tensor
    masks: torch.Tensor | None = None
    fallback: torch.Tensor | None = None
    status: torch.Tensor | None = None


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


def prompts_from_probs(probs: torch.Tensor, image_size: int, cfg: PCSWConfig, use_pcsw: bool,
                       body: torch.Tensor | None = None, class_conf: torch.Tensor | None = None) -> SlicePrompts:
    """Prompts for slabs of slices from coarse class probabilities.

    probs (N,D,K+1,s,s) -> SlicePrompts with leading dim N*D, in model-input pixels (a click is the centre of
    its coarse cell). PCSW when ``use_pcsw`` else the unconstrained per-slice boxes of the coarse argmax (the
    ``-pcsw 0`` ablation). ``class_conf`` (K,): calibrated gates (:meth:`SSSNet.gates`).
    """
    n, d = probs.shape[:2]
    with record_function("sss.pcsw"):
        p = pcsw_prompts(probs, body, cfg, class_conf) if use_pcsw else coarse_box_prompts(probs, margin=cfg.margin)
    boxes, points = p.scale_to(image_size)                 # points: cell centres, continuous image coordinates
    points = torch.where(p.valid[..., None], points - 0.5, points)       # -> pixel indices (SlicePrompts)
    flat = lambda t: t.reshape(n * d, *t.shape[2:])  # noqa: E731
    fallback = flat(p.fallback) if p.fallback is not None else torch.zeros_like(flat(p.valid))
    return SlicePrompts(boxes=flat(boxes), points=flat(points), valid=flat(p.valid), masks=flat(p.masks),
                        fallback=fallback, status=p.status)


def build_sss_net(conf: ModelConf, device="cpu", sam_ckpt: str | None = None) -> SSSNet:
    """Build the model of ``conf``: SAM-2 from ``sam_config``/``sam_ckpt`` at ``image_size``, DFE if ``dfe``.

    ``sam_ckpt`` overrides ``conf.sam_ckpt`` (``"none"`` when the weights come from our own checkpoint).
    SAM-2 attends to at most ``memory_bank_size`` conditioning frames (``max_cond_frames_in_attn``; no
    weights depend on it). ``freeze_encoder``: ``requires_grad=False`` on the image encoder. ``grad_ckpt``:
    activation checkpointing of its Hiera blocks (:mod:`sam2_train.model.levers`)."""
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


def upsample(logits: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B,C,h,w) logits to ``size``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
