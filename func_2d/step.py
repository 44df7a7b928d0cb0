"""One 2D training step (``-method supervised | fixmatch | sss``): read :meth:`Student2D.forward` top to bottom.

Shapes: B labeled slices, N unlabeled slices in Bu >= 2 slabs of L consecutive slices (PCSW needs neighbours;
the slabs of a step come from distinct volumes, see :func:`unlabeled_slabs`), K foreground classes, S image
size, s = S/4 coarse/low-res size. Prompts are in model-input pixels.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import record_function

from func_2d.predict import predict_volume
from sam2_train.engine.trainer import Task, TrainConfig
from sam2_train.model.cutmix import clip_cutmix_partners, sample_box_masks
from sam2_train.model.losses import bce_dice_loss, ce_dice_loss
from sam2_train.model.pcsw import PCSWConfig
from sam2_train.model.semi import (SemiConf, UnlabeledTargets, body_mask, choose_prompts, gt_prompts, lambda_u, mix_strong_views,
                                   one_hot_fg, step_outputs, student_strong_views)
from sam2_train.model.sss_net import SSSNet, prompts_from_probs, pseudo_labels, upsample


@torch.no_grad()
def teacher_targets(teacher: SSSNet, views: dict, semi: SemiConf, pcsw: PCSWConfig,
                    share_weak: bool = False) -> UnlabeledTargets:
    """Teacher pass on the weak view -> PCSW prompts (``semi.use_pcsw``), pseudo-labels, confidences; then
    CutMix (``semi.cutmix_p``) of both strong views by the same boxes. views: ``image_w``, ``image_s1``,
    ``image_s2`` of shape (Bu,L,1,S,S), L = ``semi.slab_len``. Pixels of classes prompted by a PCSW fallback
    keep their confidence only where it is >= ``semi.tau_fallback``.
    ``share_weak``: hand the weak view's backbone features (before conv_s0/conv_s1) to the student (only with a
    frozen image encoder, where they are the student's own)."""
    slab_len = semi.slab_len
    img_u_w, img_u_s1, img_u_s2 = (views[key].flatten(0, 1) for key in ("image_w", "image_s1", "image_s2"))
    n, size = img_u_w.shape[0], img_u_w.shape[-1]
    raw_u_w = teacher.backbone(img_u_w)
    feats_u_w, _ = teacher.enhance(teacher.project(raw_u_w).feats)
    probs_u_w = teacher.coarse(feats_u_w).float().softmax(1)                         # (N,K+1,s,s)
    s = probs_u_w.shape[-1]
    prompts_u_w = prompts_from_probs(probs_u_w.view(-1, slab_len, *probs_u_w.shape[1:]), size, pcsw, semi.use_pcsw,
                                     body=body_mask(img_u_w, s).view(-1, slab_len, s, s), class_conf=teacher.gates(pcsw))
    mask_u_w, conf_u_w = pseudo_labels(teacher.refine(feats_u_w, prompts_u_w), prompts_u_w.valid, probs_u_w,
                                       prompts_u_w.fallback, semi.tau_fallback, fuse=pcsw.fuse)
    # each strong view takes a box from slice t of another slab (another volume) of the same view
    bu = views["image_w"].shape[0]
    partner = torch.cat([clip_cutmix_partners(bu, slab_len, img_u_w.device),
                         clip_cutmix_partners(bu, slab_len, img_u_w.device) + n])                      # (2N,)
    box_masks = sample_box_masks(2 * n, size, semi.cutmix_p, img_u_w.device)                                # (2N,S,S)
    targets = mix_strong_views(img_u_w, img_u_s1, img_u_s2, mask_u_w, conf_u_w, prompts_u_w, partner, box_masks,
                               pcsw.margin, weak_backbone=raw_u_w.feats if share_weak else None)
    targets.pcsw_status = prompts_u_w.status
    return targets


class Student2D(nn.Module):
    """The whole 2D step as one forward (one DDP call): ``forward(batch_l, batch_u, iteration) -> losses``.

    The teacher (the EMA of the student, or the student itself) is held outside the module tree: it is not
    trained, saved with the student or wrapped by DDP."""

    def __init__(self, net: SSSNet, teacher: SSSNet, config: TrainConfig, autocast=contextlib.nullcontext):
        super().__init__()
        self.net, self._teacher, self.semi, self.pcsw, self.autocast = net, (teacher,), config.semi, config.pcsw, autocast
        # a frozen image encoder is the same in teacher and student: the teacher's weak-view backbone pass serves
        # both (each applies its own conv_s0/conv_s1, which train)
        self.frozen_encoder = config.model.freeze_encoder

    def forward(self, batch_l: dict, batch_u: dict | None, iteration: int) -> dict:
        net, semi, k, size = self.net, self.semi, self.net.num_classes, self.net.image_size
        img_x, mask_x = batch_l["image"], batch_l["label"]                              # (B,1,S,S), (B,S,S)
        cw = semi.ce_class_weight(img_x.device)                                         # (K+1,) or None
        with self.autocast():
            # labeled: coarse head (CE+Dice) + SAM-2 masks (BCE+Dice) of the prompted classes; prompts are jittered
            # ground-truth boxes with probability p_gt, else the model's own PCSW prompts (as at test time)
            feats_x, _ = net.enhance(net.encode(img_x).feats)
            pred_x = net.coarse(feats_x)                                                # (B,K+1,s,s)
            probs_x = pred_x.detach().float().softmax(1)
            if self.pcsw.calibrate:
                net.update_class_conf(probs_x, mask_x)                                  # PCSW gates (buffer)
            own_x = prompts_from_probs(probs_x[:, None], size, self.pcsw, semi.use_pcsw, class_conf=net.gates(self.pcsw))
            use_gt = torch.rand(img_x.shape[0], 1, device=img_x.device) < semi.p_gt
            prompts_x = choose_prompts(use_gt, gt_prompts(mask_x, k, size), own_x)
            refined_x = net.refine(feats_x, prompts_x)                                  # (B,K,s,s)
            y = F.interpolate(mask_x[:, None].float(), size=semi.out_size, mode="nearest")[:, 0].long()
            with record_function("sss.loss"):
                loss_x = (ce_dice_loss(upsample(pred_x, semi.out_size), y, class_weight=cw)
                          + bce_dice_loss(upsample(refined_x, semi.out_size), one_hot_fg(y, k), prompts_x.valid))
            if batch_u is None:
                return {"loss": loss_x, "loss_x": loss_x}

            # unlabeled: the teacher's pseudo-labels on the weak view, carried to two CutMix-ed strong views
            u = teacher_targets(self._teacher[0], batch_u, semi, self.pcsw, share_weak=self.frozen_encoder)
            # student: weak + strong views through the encoder (no autograd by default), DFE(W, S1), DFE(W, S2);
            # conf_ok (2N,s,s): the confident pseudo-label pixels
            feats_u_s, conf_ok = student_strong_views(net, u, semi)
            pred_u_s, refined_u_s = net.coarse(feats_u_s.feats), net.refine(feats_u_s.feats, u.prompts)
            with record_function("sss.loss"):
                loss_u = (ce_dice_loss(pred_u_s, u.labels, conf_ok, class_weight=cw)
                          + bce_dice_loss(refined_u_s, one_hot_fg(u.labels, k), u.prompts.valid, conf_ok))
            loss = loss_x + lambda_u(semi, iteration) * loss_u
        return step_outputs(loss, loss_x, loss_u, conf_ok, u, k)


def predict(net: SSSNet, image, *, config: TrainConfig, infer: str, device, autocast):
    """Label volume (D,H,W) of an image volume (D,H,W), slice by slice (see :func:`func_2d.predict.predict_volume`)."""
    return predict_volume(net, image, device=device, autocast=autocast, pcsw=config.pcsw, infer=infer,
                          protocol=config.run.protocol, chunk=max(8, config.run.batch_size))


def unlabeled_slabs(config: TrainConfig) -> int:
    """Unlabeled slabs per step: ``-b_u`` slices in slabs of ``-slab_len``, at least two, so that CutMix always
    pastes from another slab (the loader draws the slabs of a step from distinct volumes)."""
    return max(2, config.run.batch_size_u // config.semi.slab_len)


TASK_2D = Task(script="2d", make_student=Student2D, predict=predict, unlabeled_batch=unlabeled_slabs)
