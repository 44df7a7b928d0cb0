"""The 2D step of the SAM-2 student (``train_2d.py``): masks of the prompted classes come from SAM-2's decoder,
one object per class, every class of every slice in one call. Unlabeled slices come in slabs of ``-slab_len``
consecutive slices of distinct volumes (PCSW needs neighbours). Registers ``-method supervised``, ``fixmatch``
and ``sss`` for ``-student sam2`` in 2D (:class:`sam2_train.methods.weak_to_strong.SAM2Step` has the step)."""
from __future__ import annotations

import torch

from sam2_train.methods.registry import register
from sam2_train.methods.weak_to_strong import (FixMatchVariant, SAM2Step, SSSLabeledOnlyVariant, SSSVariant,
                                              SupervisedVariant)
from sam2_train.model.cutmix import sample_box_masks
from sam2_train.model.labels import pseudo_labels
from sam2_train.model.losses import bce_dice_loss
from sam2_train.model.pcsw import image_prompts
from sam2_train.model.prompts import choose_prompts, gt_prompts, one_hot_fg
from sam2_train.model.resize import upsample


class SAM2Slices(SAM2Step):
    scripts = ("2d",)

    @classmethod
    def unlabeled_items(cls, config) -> int:
        """``-b_u`` slices in slabs of ``-slab_len``, at least two slabs, so that CutMix always pastes from another
        slab (the loader draws the slabs of a step from distinct volumes)."""
        return max(2, config.run.batch_size_u // config.data.slab_len)

    def labeled_rows(self, batch_l):
        return batch_l["image"], batch_l["label"], batch_l["image"].shape[0]             # (B,1,S,S), (B,S,S)

    def labeled_mask_loss(self, feats, probs, images, labels, y, clips):
        """Each slice is prompted by jittered ground-truth boxes + clicks with probability ``-p_gt``, else by
        its own prompts (PCSW over the slice alone, or coarse boxes); BCE+Dice of the decoder's masks."""
        net, k, size = self.net, self.net.num_classes, self.net.image_size
        own = image_prompts(probs[:, None], size, self.pcsw, self.conf.pcsw, class_conf=net.gates(self.pcsw))
        use_gt = torch.rand(images.shape[0], 1, device=images.device) < self.conf.p_gt
        prompts = choose_prompts(use_gt, gt_prompts(labels, k, size), own)
        refined = net.refine(feats.feats, prompts)                                        # (B,K,s,s)
        return bce_dice_loss(upsample(refined, self.conf.out_size), one_hot_fg(y, k), prompts.valid)

    def teacher_masks(self, teacher, feats, prompts, probs, bu):
        """The decoder's masks fused with the coarse head (``-pcsw_fuse``); a class prompted by a PCSW fallback
        keeps pseudo-label confidence only where it is >= ``-tau_fallback``."""
        return (*self.prompted_labels(teacher, feats, prompts, probs, 0), prompts)

    def prompted_labels(self, net, feats, prompts, probs, num_clips):
        return pseudo_labels(net.refine(feats.feats, prompts), prompts.valid, probs, prompts.fallback,
                             self.conf.tau_fallback, fuse=self.pcsw.fuse)

    def box_masks(self, bu, length, size, device):
        return sample_box_masks(2 * bu * length, size, self.semi.cutmix_p, device)       # one box per strong row

    def unlabeled_mask_loss(self, feats, u, conf_ok):
        refined = self.net.refine(feats.feats, u.prompts)
        return bce_dice_loss(refined, one_hot_fg(u.labels, self.net.num_classes), u.prompts.valid, conf_ok)


@register
class Supervised2D(SupervisedVariant, SAM2Slices):
    """``-method supervised``: slices."""


@register
class FixMatch2D(FixMatchVariant, SAM2Slices):
    """``-method fixmatch``: slices."""


@register
class SSS2D(SSSVariant, SAM2Slices):
    """``-method sss``: slices."""


@register
class SSSLabeledOnly2D(SSSLabeledOnlyVariant, SAM2Slices):
    """``-method sss_labeled_only``: slices."""
