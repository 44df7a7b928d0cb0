"""One 3D training step on clips of consecutive slices (``-method supervised | fixmatch | sss``): read
:meth:`Student3D.forward` top to bottom. It mirrors ``func_2d.step`` with SAM-2 memory tracking (slices are
video frames) in place of the per-slice decoder:

- labeled clips: all frames encoded in one call, DFE(W=S), coarse head (CE+Dice); each class is prompted
  on every f-th of its prompted frames (f = ``-prompt_freq``, the rule of inference): a jittered
  ground-truth box (``-prompt bbox``) or click (``-prompt click``) with probability ``-p_gt`` per clip, else
  the clip's own PCSW prompts (box + most confident point, as at test time); SAM-2 memory
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

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from torch.profiler import record_function

from func_3d.predict import memory_dtype_for, predict_volume
from sam2_train.engine.trainer import Task, TrainConfig
from sam2_train.model.cutmix import clip_cutmix_partners, sample_box_masks
from sam2_train.model.losses import bce_dice_loss, ce_dice_loss
from sam2_train.model.pcsw import PCSWConfig
from sam2_train.model.sam2_model import ImageFeatures, upsample_logits
from sam2_train.model.semi import (SemiConf, UnlabeledTargets, body_mask, choose_prompts, gt_prompts, lambda_u, mix_strong_views,
                                   one_hot_fg, step_outputs, student_strong_views, thin_prompt_frames)
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
      This target comes from the unmasked ``target`` (any pixel, confident or not): a class whose pixels are
      all below the confidence threshold is uncertain, not absent.
    Objects never prompted in their clip are left out: they are masked out at inference too.
    """
    present = (target.bool() if valid_px is None else target.bool() & valid_px[:, None]).flatten(2).any(-1)
    present_obj = target.bool().flatten(2).any(-1)                               # (N,K), ignores valid_px
    w_mask = tr.prompted & present & (tr.scores.detach() > 0)
    logits = upsample_logits(tr.masks, target.shape[-2:])
    loss_mask = bce_dice_loss(logits, target, w_mask, valid_px)
    w_obj = tr.prompted.float()
    bce = F.binary_cross_entropy_with_logits(tr.scores.float(), present_obj.float(), reduction="none")
    return loss_mask + (bce * w_obj).sum() / w_obj.sum().clamp_min(1.0)


@torch.no_grad()
def teacher_targets(teacher: SSSNet, views: dict, semi: SemiConf, pcsw: PCSWConfig,
                    share_weak: bool = False) -> UnlabeledTargets:
    """Teacher pass on the weak clips -> tracked pseudo-labels, confidences, prompts; then 3-D CutMix.

    views: ``image_w``, ``image_s1``, ``image_s2`` of shape (Bu,T,1,S,S). Each class is prompted (PCSW with
    ``semi.use_pcsw``, else coarse boxes) on every ``semi.prompt_freq``-th of its prompted frames (:func:`thin_prompt_frames`) and tracked through all frames;
    pseudo-labels come from the tracked logits where SAM-2's object score is > 0 (elsewhere the class counts as
    not prompted: coarse-probability confidence, see :func:`pseudo_labels`). CutMix: one box per strong clip
    on all its frames (a cuboid, with probability ``semi.cutmix_p``), partner = frame t of another clip (the same
    clip reversed if there is one). A class prompted by a PCSW fallback in a clip keeps pseudo-label confidence
    only where it is >= ``semi.tau_fallback`` on every frame of that clip.
    ``share_weak``: hand the weak clips' backbone features (before conv_s0/conv_s1) to the student (only with a
    frozen image encoder, where they are the student's own).
    """
    bu, t = views["image_w"].shape[:2]
    img_u_w, img_u_s1, img_u_s2 = (views[key].flatten(0, 1) for key in ("image_w", "image_s1", "image_s2"))
    n, size = img_u_w.shape[0], img_u_w.shape[-1]
    raw = teacher.backbone(img_u_w)
    enc = teacher.project(raw)
    feats_u_w, _ = teacher.enhance(enc.feats)
    probs_u_w = teacher.coarse(feats_u_w).float().softmax(1)                          # (N,K+1,s,s)
    s, k = probs_u_w.shape[-1], probs_u_w.shape[1] - 1
    p = prompts_from_probs(probs_u_w.view(bu, t, *probs_u_w.shape[1:]), size, pcsw, semi.use_pcsw,
                           body=body_mask(img_u_w, s).view(bu, t, s, s), class_conf=teacher.gates(pcsw))
    valid = thin_prompt_frames(p.valid.view(bu, t, k), semi.prompt_freq).flatten(0, 1)
    prompts_u_w = SlicePrompts(p.boxes, p.points, valid, p.masks & valid[..., None, None])
    tr = track_clips(teacher, enc.replace(feats_u_w), prompts_u_w, bu)
    fallback = p.fallback.view(bu, t, k).any(1, keepdim=True).expand(bu, t, k).flatten(0, 1)    # (N,K) per clip
    mask_u_w, conf_u_w = pseudo_labels(tr.masks, tr.prompted & (tr.scores > 0), probs_u_w, fallback,
                                       semi.tau_fallback, fuse=pcsw.fuse)
    partner = torch.cat([clip_cutmix_partners(bu, t, img_u_w.device), clip_cutmix_partners(bu, t, img_u_w.device) + n])
    box_masks = sample_box_masks(2 * bu, size, semi.cutmix_p, img_u_w.device).repeat_interleave(t, dim=0)   # (2N,S,S)
    targets = mix_strong_views(img_u_w, img_u_s1, img_u_s2, mask_u_w, conf_u_w, prompts_u_w, partner, box_masks,
                               pcsw.margin, num_clips=2 * bu, weak_backbone=raw.feats if share_weak else None)
    targets.pcsw_status = p.status
    return targets


def labeled_prompts(net: SSSNet, probs: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, b: int, t: int, *,
                    pcsw: PCSWConfig, use_pcsw: bool, p_gt: float, prompt: str, prompt_freq: int):
    """Prompts of B labeled clips (rows clip-major): (SlicePrompts (N,K), use_box (N,1), use_point (N,1)).

    Per clip, with probability ``p_gt``: ground-truth boxes (``prompt == "bbox"``) or clicks (``"click"``) of
    the classes present on the frame; otherwise the PCSW (box + point) prompts of the clip's own coarse
    probabilities ``probs`` (N,K+1,s,s). Either way each class keeps every ``prompt_freq``-th of its prompted
    frames, its first always (:func:`thin_prompt_frames`, the rule of inference)."""
    k, size, s = net.num_classes, net.image_size, probs.shape[-1]
    own = prompts_from_probs(probs.view(b, t, *probs.shape[1:]), size, pcsw, use_pcsw,
                             body=body_mask(images, s).view(b, t, s, s), class_conf=net.gates(pcsw))
    use_gt = (torch.rand(b, 1, device=images.device) < p_gt).repeat_interleave(t, dim=0)       # (N,1)
    p = choose_prompts(use_gt, gt_prompts(labels, k, size), own)
    valid = thin_prompt_frames(p.valid.view(b, t, k), prompt_freq).flatten(0, 1)
    return SlicePrompts(p.boxes, p.points, valid), ~use_gt | (prompt == "bbox"), ~use_gt | (prompt == "click")


class Student3D(nn.Module):
    """The whole 3D step as one forward (one DDP call): ``forward(batch_l, batch_u, iteration) -> losses``.
    The teacher is held outside the module tree (not trained, saved or wrapped by DDP)."""

    def __init__(self, net: SSSNet, teacher: SSSNet, config: TrainConfig, autocast=contextlib.nullcontext):
        super().__init__()
        self.net, self._teacher, self.semi, self.pcsw, self.autocast = net, (teacher,), config.semi, config.pcsw, autocast
        # a frozen image encoder is the same in teacher and student: the teacher's weak-view backbone pass serves
        # both (each applies its own conv_s0/conv_s1, which train)
        self.frozen_encoder = config.model.freeze_encoder

    def forward(self, batch_l: dict, batch_u: dict | None, iteration: int) -> dict:
        net, semi, k = self.net, self.semi, self.net.num_classes
        b, t = batch_l["image"].shape[:2]
        img_x, mask_x = batch_l["image"].flatten(0, 1), batch_l["label"].flatten(0, 1)    # (N,1,S,S), (N,S,S)
        cw = semi.ce_class_weight(img_x.device)                                            # (K+1,) or None
        with self.autocast():
            # labeled clips: every frame in one encoder call, coarse head (CE+Dice) + SAM-2 tracking of the
            # prompted classes through the clip (mask BCE+Dice, object-score BCE on every frame)
            enc_x = net.encode(img_x)
            feats_x, _ = net.enhance(enc_x.feats)
            pred_x = net.coarse(feats_x)                                                   # (N,K+1,s,s)
            probs_x = pred_x.detach().float().softmax(1)
            if self.pcsw.calibrate:
                net.update_class_conf(probs_x, mask_x)                                     # PCSW gates (buffer)
            prompts_x, use_box, use_point = labeled_prompts(
                net, probs_x, img_x, mask_x, b, t, pcsw=self.pcsw, use_pcsw=semi.use_pcsw,
                p_gt=semi.p_gt, prompt=semi.prompt, prompt_freq=semi.prompt_freq)
            tracked_x = track_clips(net, enc_x.replace(feats_x), prompts_x, b, use_box, use_point)
            y = F.interpolate(mask_x[:, None].float(), size=semi.out_size, mode="nearest")[:, 0].long()
            with record_function("sss.loss"):
                loss_x = ce_dice_loss(upsample(pred_x, semi.out_size), y, class_weight=cw) + track_loss(tracked_x, one_hot_fg(y, k))
            if batch_u is None:
                return {"loss": loss_x, "loss_x": loss_x}

            # unlabeled clips: the teacher's tracked pseudo-labels on the weak clips, carried to two strong clips
            u = teacher_targets(self._teacher[0], batch_u, semi, self.pcsw, share_weak=self.frozen_encoder)
            # student: weak + strong clips through the encoder (no autograd by default), DFE(W, S1), DFE(W, S2);
            # conf_ok (2N,s,s): the confident pseudo-label pixels; the strong clips are tracked like the labeled ones
            feats_u_s, conf_ok = student_strong_views(net, u, semi)
            tracked_u_s = track_clips(net, feats_u_s, u.prompts, u.num_clips)
            with record_function("sss.loss"):
                loss_u = (ce_dice_loss(net.coarse(feats_u_s.feats), u.labels, conf_ok, class_weight=cw)
                          + track_loss(tracked_u_s, one_hot_fg(u.labels, k), conf_ok))
            loss = loss_x + lambda_u(semi, iteration) * loss_u
        return step_outputs(loss, loss_x, loss_u, conf_ok, u, k)


def predict(net: SSSNet, image, *, config: TrainConfig, infer: str, device, autocast):
    """Label volume (D,H,W) of an image volume (D,H,W), streamed through SAM-2's memory."""
    return predict_volume(net, image, device=device, autocast=autocast, pcsw=config.pcsw, infer=infer,
                          prompt_freq=config.semi.prompt_freq, chunk=8, memory_dtype=memory_dtype_for(device, autocast))


TASK_3D = Task(script="3d", make_student=Student3D, predict=predict, unlabeled_batch=lambda config: config.run.batch_size_u)
