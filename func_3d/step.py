"""One 3D training step on clips of consecutive slices: ``-method supervised | fixmatch | sss``.

Slices of a volume are SAM-2 video frames. Read ``teacher_targets`` and ``Student3D.forward`` top to bottom;
they mirror ``func_2d.step`` with SAM-2 memory tracking in place of the per-slice decoder:

- labeled clips: all frames encoded in one call, DFE(W=S), coarse head (CE+Dice); prompts on frames
  0, f, 2f, ... (f = ``-prompt_freq``): a jittered ground-truth box (``-prompt bbox``) or click
  (``-prompt click``) per class present on the frame with probability ``-p_gt`` per clip, else the
  clip's own PCSW prompts (box + most confident point, as at test time) on those frames; SAM-2 memory
  carries the masks to every other frame (:meth:`SAM2Seg.track`, forwards then backwards from the first
  prompted frame); every frame is supervised (:func:`track_loss`).
- unlabeled clips: the teacher tracks its own PCSW prompts through the weak clip -> pseudo-labels and
  confidences on every frame; two strong clips are CutMix-ed with one box per clip (the same box on all of
  its frames, a cuboid) and a partner clip (:func:`sam2_train.model.cutmix.clip_cutmix_partners`); the student
  (encoder without autograd by default) goes through DFE(W, S), the coarse head and SAM-2 tracking with the
  mixed prompts, against the mixed pseudo-labels (pixels with confidence < ``-tau_u`` ignored).

Shapes: B labeled clips, Bu unlabeled clips, T = ``-video_length`` frames, N = clips x T rows (clip-major),
K foreground classes, S image size, s = S/4 coarse/low-res size. Clips are looped over only when there are
several (frames and objects are always batched).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from torch.profiler import record_function

from sam2_train.model.losses import bce_dice_loss, ce_dice_loss
from sam2_train.model.pcsw import PCSWConfig
from sam2_train.model.sam2_model import ImageFeatures, upsample_logits
from sam2_train.model.cutmix import clip_cutmix_partners, sample_box_masks
from sam2_train.model.levers import encoder_frozen
from sam2_train.model.semi import (body_mask, choose_prompts, gt_prompts, mix_strong_views, one_hot_fg, run_step,
                                  strong_view_features, thin_prompt_frames)
from sam2_train.model.sss_net import NEG, SlicePrompts, SSSNet, prompts_from_probs, pseudo_labels, upsample


@dataclass
class Tracked:
    """SAM-2 tracking of K objects through N = clips x T frames."""
    masks: torch.Tensor         # (N,K,s,s) low-res logits (-1024 where SAM-2 says absent; NEG for unprompted clips)
    scores: torch.Tensor        # (N,K) object-score logits
    prompted: torch.Tensor      # (N,K) bool: the object has a prompt somewhere in its clip


def track_clips(net: SSSNet, feats: ImageFeatures, prompts: SlicePrompts, num_clips: int,
                use_box: torch.Tensor | None = None, use_point: torch.Tensor | None = None) -> Tracked:
    """Track the prompted classes of ``num_clips`` clips (rows clip-major) with SAM-2 memory.

    ``prompts`` (N,K): a valid entry prompts its object on that frame with its box (where ``use_box`` (N,1),
    default all) and its point (where ``use_point`` (N,1), default all). A clip without any prompt is not
    tracked (masks NEG, scores -1024, ``prompted`` False).
    """
    n, k = prompts.valid.shape
    t = n // num_clips
    valid = prompts.valid
    box_valid = valid if use_box is None else valid & use_box
    point_on = valid if use_point is None else valid & use_point
    prompted = box_valid | point_on                                              # (N,K)
    per_clip = prompted.view(num_clips, t, k)
    has_prompt = per_clip.flatten(1).any(1).tolist()                             # one host sync per step
    point_labels = torch.where(point_on, 1, -1).to(torch.int32)[..., None]       # (N,K,1)
    s = net.sam.low_res_size
    dev = valid.device
    masks, scores = [], []
    for c in range(num_clips):
        rows = slice(c * t, (c + 1) * t)
        if not has_prompt[c]:
            masks.append(torch.full((t, k, s, s), NEG, device=dev))
            scores.append(torch.full((t, k), NO_OBJ_SCORE, device=dev))
            continue
        with record_function("sss.track"):
            out = net.sam.track(feats.select(rows), boxes=prompts.boxes[rows], box_valid=box_valid[rows],
                                points=prompts.points[rows, :, None], point_labels=point_labels[rows])
        masks.append(out.masks)
        scores.append(out.object_scores)
    obj = per_clip.any(1, keepdim=True).expand(-1, t, -1).reshape(n, k)
    return Tracked(masks=torch.cat(masks), scores=torch.cat(scores), prompted=obj)


def track_loss(tr: Tracked, target: torch.Tensor, valid_px: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of tracked masks against per-object targets (N,K,H,W) in {0,1} (masks resized to H,W).

    - BCE+Dice of the mask logits for objects prompted in the clip and present on the frame (present = any
      valid target pixel). Frames where SAM-2's object score is <= 0 are left out of this term: SAM-2 sets
      the mask to -1024 there (no gradient, only a huge constant BCE).
    - BCE of the object-score logits vs "present on this frame" for every frame of every object prompted
      in the clip (teaches SAM-2 when a tracked class has ended, and brings back masks gated off above).
    Objects never prompted in their clip are left out: they are masked out at inference too.
    """
    present = (target.bool() if valid_px is None else target.bool() & valid_px[:, None]).flatten(2).any(-1)
    w_mask = tr.prompted & present & (tr.scores.detach() > 0)
    logits = upsample_logits(tr.masks, target.shape[-2:])
    loss_mask = bce_dice_loss(logits, target, w_mask, valid_px)
    w_obj = tr.prompted.float()
    bce = F.binary_cross_entropy_with_logits(tr.scores.float(), present.float(), reduction="none")
    return loss_mask + (bce * w_obj).sum() / w_obj.sum().clamp_min(1.0)


@dataclass
class UnlabeledTargets:
    """What the teacher hands the student (strong clips stacked: view 1 rows then view 2 rows)."""
    images: torch.Tensor        # (3N,1,S,S): weak, mixed strong 1, mixed strong 2 (N = Bu*T, clip-major)
    box_masks: torch.Tensor     # (2N,S,S) bool, CutMix region of each strong frame (one box per clip)
    partner: torch.Tensor       # (2N,) row of the stacked strong views pasted into each box
    labels: torch.Tensor        # (2N,s,s) int64 pseudo-labels, mixed
    conf: torch.Tensor          # (2N,s,s) confidence, mixed
    prompts: SlicePrompts       # (2N,K) prompts, mixed
    num_clips: int              # 2*Bu strong clips of T frames
    weak_feats: list | None = None  # the teacher's weak-clip encoder features (3 levels of (N,...)), when shared


@torch.no_grad()
def teacher_targets(teacher: SSSNet, views: dict, cfg: PCSWConfig, use_pcsw: bool, cutmix_p: float,
                    prompt_freq: int, share_weak: bool = False) -> UnlabeledTargets:
    """Teacher pass on the weak clips -> tracked pseudo-labels, confidences, prompts; then 3-D CutMix.

    views: ``image_w``, ``image_s1``, ``image_s2`` of shape (Bu,T,1,S,S). Prompts: the PCSW prompts of the
    clip, each class on every ``prompt_freq``-th of its PCSW-prompted frames (:func:`thin_prompt_frames`);
    SAM-2 tracks them through all frames. Pseudo-labels come from the tracked logits of the prompted classes on frames
    where SAM-2's object score is > 0; elsewhere a class counts as not prompted (coarse-probability
    fallback for the confidence, see :func:`pseudo_labels`). ``share_weak``: hand the weak clips' encoder
    features to the student (``weak_feats``; only valid with a frozen encoder).
    """
    bu, t = views["image_w"].shape[:2]
    xw, xs1, xs2 = (views[key].flatten(0, 1) for key in ("image_w", "image_s1", "image_s2"))
    n, size = xw.shape[0], xw.shape[-1]
    enc = teacher.encode(xw)
    fw, _ = teacher.enhance(enc.feats)
    probs = teacher.coarse(fw).float().softmax(1)                               # (N,K+1,s,s)
    s, k = probs.shape[-1], probs.shape[1] - 1
    p = prompts_from_probs(probs.view(bu, t, *probs.shape[1:]), size, cfg, use_pcsw,
                           body=body_mask(xw, s).view(bu, t, s, s))
    valid = thin_prompt_frames(p.valid.view(bu, t, k), prompt_freq).flatten(0, 1)
    prompts = SlicePrompts(p.boxes, p.points, valid, p.masks & valid[..., None, None])
    tr = track_clips(teacher, enc.replace(fw), prompts, bu)
    labels, conf = pseudo_labels(tr.masks, tr.prompted & (tr.scores > 0), probs)

    # 3-D CutMix: one box per strong clip on all its frames; partner = frame t of another clip (or the
    # same clip reversed when there is one clip); images, pseudo-labels, confidences and prompts alike.
    partner = torch.cat([clip_cutmix_partners(bu, t, xw.device), clip_cutmix_partners(bu, t, xw.device) + n])
    box_masks = sample_box_masks(2 * bu, size, cutmix_p, xw.device).repeat_interleave(t, dim=0)  # (2N,S,S)
    return UnlabeledTargets(**mix_strong_views(xw, xs1, xs2, labels, conf, prompts, partner, box_masks, cfg.margin),
                            num_clips=2 * bu, weak_feats=enc.feats if share_weak else None)


class Student3D(nn.Module):
    """The student's forward for one step, as one call (one DDP forward): returns the loss terms."""

    def __init__(self, net: SSSNet, args):
        super().__init__()
        self.net = net
        self.use_pcsw, self.p_gt, self.tau_u = bool(args.pcsw), args.p_gt, args.tau_u
        self.out_size, self.unsup_encoder_grad = args.out_size, args.unsup_encoder_grad
        self.prompt, self.prompt_freq = args.prompt, args.prompt_freq
        self.pcsw_cfg = PCSWConfig.from_args(args)
        self.encoder_frozen = encoder_frozen(net.sam.sam.image_encoder)   # the teacher's weak pass is ours then

    def labeled_prompts(self, probs: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, b: int, t: int):
        """Prompts of B labeled clips on frames 0, f, 2f, ...: (SlicePrompts (N,K), use_box (N,1), use_point (N,1)).

        Per clip, with probability p_gt: ground-truth boxes (``-prompt bbox``) or clicks (``-prompt click``)
        of the classes present on the frame; otherwise the PCSW (box + point) prompts of the clip's own
        coarse probabilities ``probs`` (N,K+1,s,s).
        """
        k, size = self.net.num_classes, self.net.image_size
        s = probs.shape[-1]
        own = prompts_from_probs(probs.view(b, t, *probs.shape[1:]), size, self.pcsw_cfg, self.use_pcsw,
                                 body=body_mask(images, s).view(b, t, s, s))
        use_gt = (torch.rand(b, 1, device=images.device) < self.p_gt).repeat_interleave(t, dim=0)   # (N,1)
        p = choose_prompts(use_gt, gt_prompts(labels, k, size), own)
        on_frame = (torch.arange(t, device=images.device) % self.prompt_freq == 0).repeat(b)[:, None]
        p = SlicePrompts(p.boxes, p.points, p.valid & on_frame)
        return p, ~use_gt | (self.prompt == "bbox"), ~use_gt | (self.prompt == "click")

    def forward(self, image_l: torch.Tensor, label_l: torch.Tensor, u: UnlabeledTargets | None = None) -> dict:
        net, k = self.net, self.net.num_classes
        # Labeled clips (B,T,1,S,S): every frame in one encoder call, DFE(W=S), coarse head + tracked masks.
        b, t = image_l.shape[:2]
        x, y = image_l.flatten(0, 1), label_l.flatten(0, 1)                        # (N,1,S,S), (N,S,S)
        enc = net.encode(x)
        f_l, _ = net.enhance(enc.feats)
        coarse_l = net.coarse(f_l)
        prompts, use_box, use_point = self.labeled_prompts(coarse_l.detach().float().softmax(1), x, y, b, t)
        tracked = track_clips(net, enc.replace(f_l), prompts, b, use_box, use_point)
        y_out = F.interpolate(y[:, None].float(), size=self.out_size, mode="nearest")[:, 0].long()
        with record_function("sss.loss"):
            loss_x = ce_dice_loss(upsample(coarse_l, self.out_size), y_out) + track_loss(tracked, one_hot_fg(y_out, k))
        if u is None:
            return {"loss_x": loss_x}

        # Unlabeled: weak + mixed strong clips through the encoder (no autograd by default), the weak
        # features mixed like the strong images so DFE(W, S1), DFE(W, S2) pair aligned pixels.
        enc_u, fs = strong_view_features(net, u.images, u.partner, u.box_masks, self.unsup_encoder_grad,
                                         u.weak_feats if self.encoder_frozen else None)
        valid_px = u.conf >= self.tau_u
        tracked_u = track_clips(net, enc_u.replace(fs), u.prompts, u.num_clips)
        coarse_s = net.coarse(fs)
        with record_function("sss.loss"):
            loss_u = (ce_dice_loss(coarse_s, u.labels, valid_px)
                      + track_loss(tracked_u, one_hot_fg(u.labels, k), valid_px))
        return {"loss_x": loss_x, "loss_u": loss_u, "mask_ratio": valid_px.float().mean().detach()}


def unlabeled_targets(teacher: SSSNet, batch_u: dict, args):
    """:func:`teacher_targets` with the settings of ``args``."""
    return teacher_targets(teacher, batch_u, PCSWConfig.from_args(args), bool(args.pcsw), args.cutmix_p,
                           args.prompt_freq, share_weak=getattr(args, "encoder_lr_mult", 1.0) == 0)


# train_step(student, teacher, batch_l, batch_u, args, iteration, autocast) -> {"loss", ...}
train_step = functools.partial(run_step, unlabeled_targets)
