"""SAM-Match (Xu et al., Med. Phys. 2025; the authors' ACDC code, ``-method sammatch``): UniMatch-style
weak-to-strong where, from ``-sam_start``, a SAM-2 prompted by the boxes of the teacher's argmax (the largest
connected piece of each class widened by ``-bbox_shift`` pixels, no point:
:func:`sam2_train.model.sam_guide.largest_component_boxes`) replaces the strong views' labels outside the CutMix
box; the confidence mask and the pasted region's labels stay the teacher's. With ``-guide_train 1`` (its
default) SAM-2 is fine-tuned alongside with its own SGD on ``loss_x_sam + 0.25 loss_u_w_sam``: ground-truth boxes
of the labeled slices, and its unlabeled masks against the teacher's argmax (no confidence mask)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sam2_train.engine.settings import nonneg_int, setting, str2bool
from sam2_train.methods.registry import register
from sam2_train.methods.unet.weak_to_strong import UNetWeakToStrong
from sam2_train.model.losses import bce_dice_loss
from sam2_train.model.prompts import one_hot_fg
from sam2_train.model.sam_guide import largest_component_boxes, sam_labels

GUIDE_U_WEIGHT = 0.25   # the authors' loss_sam = loss_x_sam + loss_u_w_sam * 0.25
LABELED_BBOX_SHIFT = 3  # the authors' get_bbox256_torch default margin for the labeled slices' boxes


@register
class SAMMatch(UNetWeakToStrong):
    name, summary = "sammatch", "SAM-Match: SAM-2's labels from the teacher's boxes, SAM-2 fine-tuned jointly"
    needs_guide = True

    @dataclass(frozen=True)
    class Conf:
        sam_start: int = setting(0, flag="-sam_start", type=nonneg_int, preset=True, group="SAM-2 guide",
                                 help="sammatch: the iteration from which SAM-2's labels replace the teacher's (the "
                                      "authors' joint stage, after a UniMatch model and a fine-tuned SAM; default "
                                      "half of -max_iters)")
        bbox_shift: int = setting(5, flag="-bbox_shift", type=nonneg_int, group="SAM-2 guide",
                                  help="sammatch: margin in pixels added around the box of the teacher's argmax (the "
                                       "authors' bbox_shift)")
        guide_train: bool = setting(True, flag="-guide_train", type=str2bool, group="SAM-2 guide", metavar="{0,1}",
                                    help="sammatch: fine-tune SAM-2 alongside (loss_x_sam + 0.25 loss_u_w_sam, its "
                                         "own SGD), as SAM-Match does; 0 keeps it frozen")
        guide_lr: float = setting(5e-4, flag="-guide_lr", type=float, group="SAM-2 guide",
                                  help="sammatch -guide_train 1: SGD learning rate of SAM-2 (momentum 0.9, "
                                       "weight decay 1e-4, constant)")

    def __init__(self, net, config, **kw):
        super().__init__(net, config, **kw)
        self.guide_optimizer = (torch.optim.SGD(self.guide.sam.parameters(), lr=self.conf.guide_lr, momentum=0.9,
                                                weight_decay=1e-4, foreach=True)
                                if self.guide is not None and self.guide.trainable else None)

    @classmethod
    def defaults(cls, config) -> dict:
        return {"method": {"sam_start": config.run.max_iters // 2}}

    @classmethod
    def guide_trainable(cls, config) -> bool:
        return config.method.guide_train

    def refine_labels(self, x_w, p_w, labels, iteration):
        """From ``-sam_start``: SAM-2's labels of the weak views, prompted by the boxes of the teacher's argmax;
        a fine-tuned guide also gets its loss against those (``loss_u_w_sam``)."""
        if iteration < self.conf.sam_start:
            return labels, {}
        k = p_w.shape[1] - 1
        prompts = largest_component_boxes(labels, k, self.conf.bbox_shift)
        logits = self.guide.masks(x_w, prompts)                                         # (N,K,S,S)
        refined, _ = sam_labels(logits.detach(), prompts.valid, p_w)
        logs = {"sam_prompted": prompts.valid.float().mean()}
        if logits.requires_grad:
            logs["loss_u_w_sam"] = bce_dice_loss(logits, one_hot_fg(labels, k), prompts.valid)
        return refined, logs

    def guide_loss(self, img_x, mask_x, logs):
        """``loss_x_sam`` (ground-truth boxes of the labeled slices, every present class, BCE+Dice) ``+ 0.25
        loss_u_w_sam`` once the joint stage has begun; None for a frozen guide."""
        if self.guide_optimizer is None:
            return None
        k = self.net.num_classes
        prompts = largest_component_boxes(mask_x, k, LABELED_BBOX_SHIFT)
        loss = bce_dice_loss(self.guide.masks(img_x, prompts), one_hot_fg(mask_x, k), prompts.valid)
        return loss + GUIDE_U_WEIGHT * logs["loss_u_w_sam"] if "loss_u_w_sam" in logs else loss

    # ------------------------------------------------------------------ the fine-tuned guide is part of the run
    def extra_optimizers(self) -> list:
        return [self.guide_optimizer] if self.guide_optimizer is not None else []

    def extra_state(self) -> dict | None:
        if self.guide_optimizer is None:
            return None
        return {"guide": {"model": self.guide.sam.state_dict(), "optimizer": self.guide_optimizer.state_dict()}}

    def load_extra_state(self, state, source, with_optimizers=True):
        if self.guide_optimizer is None:
            return
        from sam2_train.engine.checkpoint import CheckpointError, load_model_state
        if not state or not state.get("guide"):
            raise CheckpointError(f"{source} holds no fine-tuned SAM-2 guide (-guide_train 1 saves it with the run)")
        load_model_state(self.guide.sam, state["guide"]["model"], strict=True, what=f"the SAM-2 guide of {source}")
        if with_optimizers:
            self.guide_optimizer.load_state_dict(state["guide"]["optimizer"])
