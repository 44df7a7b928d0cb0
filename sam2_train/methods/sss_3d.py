"""The 3D step of the SAM-2 student (``train_3d.py``): slices are video frames, so masks of the prompted classes
come from SAM-2 memory tracking through each clip (:meth:`SAM2Seg.track`: all frames encoded in one call,
forwards then backwards from the first prompted frame, objects batched). Registers ``-method supervised``,
``fixmatch`` and ``sss`` for ``-student sam2`` in 3D (:class:`sam2_train.methods.weak_to_strong.SAM2Step` has the
step).

- labeled clips: each class is prompted on every f-th of its prompted frames (f = ``-prompt_freq``, the rule of
  inference): a jittered ground-truth box (``-prompt bbox``) or click (``-prompt click``) with probability
  ``-p_gt`` per clip, else the clip's own PCSW prompts (box + most confident point, as at test time); every
  frame is supervised (:func:`track_loss`).
- unlabeled clips: the teacher tracks its own prompts through the weak clip -> pseudo-labels on every frame
  (where SAM-2's object score is > 0); two strong clips are CutMix-ed with one box per clip (the same box on all
  of its frames, a cuboid) and a partner clip; the strong clips are tracked like the labeled ones.

Shapes: B labeled clips, Bu unlabeled clips, T frames, N = clips x T rows (clip-major). Clips are looped over only
when there are several (frames and objects are always batched).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import NO_OBJ_SCORE
from torch.profiler import record_function

from sam2_train.engine.settings import setting
from sam2_train.methods.registry import register
from sam2_train.methods.weak_to_strong import (FixMatchVariant, SAM2Conf, SAM2Step, SSSLabeledOnlyVariant,
                                              SSSVariant, SupervisedVariant)
from sam2_train.model.cutmix import sample_box_masks
from sam2_train.model.labels import NEG, body_mask, pseudo_labels
from sam2_train.model.losses import bce_dice_loss
from sam2_train.model.pcsw import image_prompts
from sam2_train.model.prompts import Prompts, choose_prompts, gt_prompts, one_hot_fg, thin_prompt_frames
from sam2_train.model.sam2_model import ImageFeatures, upsample_logits
from sam2_train.model.sss_net import SSSNet


@dataclass(frozen=True)
class SAM2ClipConf(SAM2Conf):
    """:class:`SAM2Conf` plus the ground-truth prompt type of labeled clips."""
    prompt: str = setting("bbox", flag="-prompt", choices=("bbox", "click"), group="seed",
                          help="3D: ground-truth prompt type on labeled clips")


class SAM2Clips(SAM2Step):
    scripts = ("3d",)
    Conf = SAM2ClipConf

    def labeled_rows(self, batch_l):
        b = batch_l["image"].shape[0]
        return batch_l["image"].flatten(0, 1), batch_l["label"].flatten(0, 1), b       # (N,1,S,S), (N,S,S)

    def labeled_mask_loss(self, feats, probs, images, labels, y, clips):
        """Per clip, with probability ``-p_gt``: ground-truth boxes (``-prompt bbox``) or clicks (``click``) of the
        classes present on each frame, else the clip's own prompts; each class keeps every ``-prompt_freq``-th of
        its prompted frames, its first always; SAM-2 tracks them through the clip (mask BCE+Dice, object-score
        BCE on every frame)."""
        net, k, size, s = self.net, self.net.num_classes, self.net.image_size, probs.shape[-1]
        b, t = clips, images.shape[0] // clips
        own = image_prompts(probs.view(b, t, *probs.shape[1:]), size, self.pcsw, self.conf.pcsw,
                            body=body_mask(images, s).view(b, t, s, s), class_conf=net.gates(self.pcsw))
        use_gt = (torch.rand(b, 1, device=images.device) < self.conf.p_gt).repeat_interleave(t, dim=0)    # (N,1)
        p = choose_prompts(use_gt, gt_prompts(labels, k, size), own)
        valid = thin_prompt_frames(p.valid.view(b, t, k), self.config.infer.prompt_freq).flatten(0, 1)
        prompt = self.conf.prompt
        tracked = track_clips(net, feats, p.replace(valid=valid), b, ~use_gt | (prompt == "bbox"),
                              ~use_gt | (prompt == "click"))
        return track_loss(tracked, one_hot_fg(y, k))

    def teacher_masks(self, teacher, feats, prompts, probs, bu):
        """Tracked masks: each class prompted on every ``-prompt_freq``-th of its prompted frames and tracked through
        all frames; pseudo-labels where SAM-2's object score is > 0 (elsewhere the class counts as not prompted:
        coarse-probability confidence). A class prompted by a PCSW fallback in a clip keeps confidence only where it
        is >= ``-tau_fallback``, on every frame of that clip."""
        n, k = prompts.valid.shape
        t = n // bu
        valid = thin_prompt_frames(prompts.valid.view(bu, t, k), self.config.infer.prompt_freq).flatten(0, 1)
        fallback = prompts.fallback.view(bu, t, k).any(1, keepdim=True).expand(bu, t, k).flatten(0, 1)   # per clip
        thinned = prompts.replace(valid=valid, masks=prompts.masks & valid[..., None, None], fallback=fallback)
        return (*self.prompted_labels(teacher, feats, thinned, probs, bu), thinned)

    def prompted_labels(self, net, feats, prompts, probs, num_clips):
        """Each prompted class tracked through its clip; labels where SAM-2's object score is > 0."""
        tr = track_clips(net, feats, prompts, num_clips)
        return pseudo_labels(tr.masks, tr.prompted & (tr.scores > 0), probs, prompts.fallback,
                             self.conf.tau_fallback, fuse=self.pcsw.fuse)

    def box_masks(self, bu, length, size, device):
        return sample_box_masks(2 * bu, size, self.semi.cutmix_p, device).repeat_interleave(length, dim=0)

    def strong_clips(self, bu: int) -> int:
        return 2 * bu

    def unlabeled_mask_loss(self, feats, u, conf_ok):
        tracked = track_clips(self.net, feats, u.prompts, u.num_clips)
        return track_loss(tracked, one_hot_fg(u.labels, self.net.num_classes), conf_ok)


@register
class Supervised3D(SupervisedVariant, SAM2Clips):
    """``-method supervised``: clips, SAM-2 memory across slices."""


@register
class FixMatch3D(FixMatchVariant, SAM2Clips):
    """``-method fixmatch``: clips, SAM-2 memory across slices."""


@register
class SSS3D(SSSVariant, SAM2Clips):
    """``-method sss``: clips, SAM-2 memory across slices."""


@register
class SSSLabeledOnly3D(SSSLabeledOnlyVariant, SAM2Clips):
    """``-method sss_labeled_only``: clips."""


@dataclass
class Tracked:
    """SAM-2 tracking of K objects through N = clips x T frames."""
    masks: torch.Tensor         # (N,K,s,s) low-res logits (-1024 where SAM-2 says absent; NEG for unprompted clips)
    scores: torch.Tensor        # (N,K) object-score logits
    prompted: torch.Tensor      # (N,K) bool: the object has a prompt somewhere in its clip


def track_clips(net: SSSNet, feats: ImageFeatures, prompts: Prompts, num_clips: int,
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
                                points=prompts.points[rows], point_labels=point_labels[rows])
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
