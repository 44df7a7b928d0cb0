"""One 2D training step: ``-method supervised | fixmatch | sss``.

Read ``teacher_targets`` and ``Student2D.forward`` top to bottom: the teacher's pseudo-labels with PCSW
prompts on the weak view, CutMix of the two strong views (images, pseudo-labels, confidences and prompts
mixed by the same boxes), then the student's labeled loss and weak-to-strong loss through DFE.
Shapes: B labeled slices, N = b_u unlabeled slices in slabs of L consecutive slices, K foreground classes,
S image size, s = S/4 coarse/low-res size.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from sam2_train.model.cutmix import sample_box_masks, sample_cutmix_partners
from sam2_train.model.levers import encoder_frozen
from sam2_train.model.losses import bce_dice_loss, ce_dice_loss
from sam2_train.model.pcsw import PCSWConfig
from sam2_train.model.semi import (body_mask, choose_prompts, gt_prompts, mix_strong_views, one_hot_fg, run_step,
                             strong_view_features)
from sam2_train.model.sss_net import SlicePrompts, SSSNet, prompts_from_probs, pseudo_labels, upsample


@dataclass
class UnlabeledTargets:
    """What the teacher hands the student (strong views stacked: view 1 rows then view 2 rows)."""
    images: torch.Tensor        # (3N,1,S,S): weak, mixed strong 1, mixed strong 2
    box_masks: torch.Tensor     # (2N,S,S) bool, CutMix region of each strong view
    partner: torch.Tensor       # (2N,) row of the stacked strong views (view 1 then 2) pasted into each box
    labels: torch.Tensor        # (2N,s,s) int64 pseudo-labels, mixed
    conf: torch.Tensor          # (2N,s,s) confidence, mixed
    prompts: SlicePrompts       # (2N,K) prompts, mixed
    weak_feats: list | None = None  # the teacher's weak-view encoder features (3 levels of (N,...)), when shared


@torch.no_grad()
def teacher_targets(teacher: SSSNet, views: dict, slab_len: int, cfg: PCSWConfig, use_pcsw: bool,
                    cutmix_p: float, share_weak: bool = False) -> UnlabeledTargets:
    """Teacher pass on the weak view -> pseudo-labels, confidences, prompts; then CutMix of both strong views.

    views: ``image_w``, ``image_s1``, ``image_s2`` of shape (Bu,L,1,S,S). ``share_weak``: hand the weak view's
    encoder features to the student (``weak_feats``; only valid with a frozen encoder).
    """
    xw, xs1, xs2 = (views[key].flatten(0, 1) for key in ("image_w", "image_s1", "image_s2"))
    n, size = xw.shape[0], xw.shape[-1]
    enc = teacher.encode(xw)
    fw, _ = teacher.enhance(enc.feats)
    probs = teacher.coarse(fw).float().softmax(1)                               # (N,K+1,s,s)
    s = probs.shape[-1]
    prompts = prompts_from_probs(probs.view(-1, slab_len, *probs.shape[1:]), size, cfg, use_pcsw,
                                 body=body_mask(xw, s).view(-1, slab_len, s, s))
    labels, conf = pseudo_labels(teacher.refine(fw, prompts), prompts.valid, probs)

    # CutMix: each strong view takes a box from another weak-batch row (pseudo-labels and prompts alike).
    # partner: for each row of the stacked (view 1, view 2) batch, a row of the same view.
    partner = torch.cat([sample_cutmix_partners(n), sample_cutmix_partners(n) + n]).to(xw.device)  # (2N,)
    box_masks = sample_box_masks(2 * n, size, cutmix_p, xw.device)                                # (2N,S,S)
    return UnlabeledTargets(**mix_strong_views(xw, xs1, xs2, labels, conf, prompts, partner, box_masks, cfg.margin),
                            weak_feats=enc.feats if share_weak else None)


class Student2D(nn.Module):
    """The student's forward for one step, as one call (one DDP forward): returns the loss terms."""

    def __init__(self, net: SSSNet, args):
        super().__init__()
        self.net = net
        self.use_pcsw, self.p_gt, self.tau_u = bool(args.pcsw), args.p_gt, args.tau_u
        self.out_size, self.unsup_encoder_grad = args.out_size, args.unsup_encoder_grad
        self.pcsw_cfg = PCSWConfig.from_args(args)
        self.encoder_frozen = encoder_frozen(net.sam.sam.image_encoder)   # the teacher's weak pass is ours then

    def forward(self, image_l: torch.Tensor, label_l: torch.Tensor, u: UnlabeledTargets | None = None) -> dict:
        net, k, size = self.net, self.net.num_classes, self.net.image_size
        # Labeled: coarse head (CE+Dice) + refined masks (BCE+Dice) of the classes that got a prompt: a
        # jittered ground-truth box with probability p_gt, else PCSW on the model's own coarse prediction.
        f_l, _ = net.enhance(net.encode(image_l).feats)
        coarse_l = net.coarse(f_l)
        own = prompts_from_probs(coarse_l.detach().float().softmax(1)[:, None], size, self.pcsw_cfg, self.use_pcsw)
        use_gt = torch.rand(image_l.shape[0], 1, device=image_l.device) < self.p_gt
        prompts_l = choose_prompts(use_gt, gt_prompts(label_l, k, size), own)
        refined_l = net.refine(f_l, prompts_l)
        y = F.interpolate(label_l[:, None].float(), size=self.out_size, mode="nearest")[:, 0].long()
        with record_function("sss.loss"):
            loss_x = (ce_dice_loss(upsample(coarse_l, self.out_size), y)
                      + bce_dice_loss(upsample(refined_l, self.out_size), one_hot_fg(y, k), prompts_l.valid))
        if u is None:
            return {"loss_x": loss_x}

        # Unlabeled: weak + mixed strong views through the encoder (no autograd by default), DFE(W, S1/S2).
        _, fs = strong_view_features(net, u.images, u.partner, u.box_masks, self.unsup_encoder_grad,
                                     u.weak_feats if self.encoder_frozen else None)
        valid_px = u.conf >= self.tau_u
        coarse_s, refined_s = net.coarse(fs), net.refine(fs, u.prompts)
        with record_function("sss.loss"):
            loss_u = (ce_dice_loss(coarse_s, u.labels, valid_px)
                      + bce_dice_loss(refined_s, one_hot_fg(u.labels, k), u.prompts.valid, valid_px))
        return {"loss_x": loss_x, "loss_u": loss_u, "mask_ratio": valid_px.float().mean().detach()}


def unlabeled_targets(teacher: SSSNet, batch_u: dict, args) -> UnlabeledTargets:
    """:func:`teacher_targets` with the settings of ``args``."""
    return teacher_targets(teacher, batch_u, args.slab_len, PCSWConfig.from_args(args), bool(args.pcsw), args.cutmix_p,
                           share_weak=getattr(args, "encoder_lr_mult", 1.0) == 0)


# train_step(student, teacher, batch_l, batch_u, args, iteration, autocast) -> {"loss", ...}
train_step = functools.partial(run_step, unlabeled_targets)
