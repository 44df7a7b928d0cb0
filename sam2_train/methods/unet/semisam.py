"""SemiSAM (Zhang et al., arXiv 2312.06316, ``-method semisam``): a mean teacher plus L_sam, the MSE between the
student's softmax and the labels of a frozen SAM-2 (one-hot), prompted by one click per class inside the
student's mask (:func:`sam2_train.model.sam_guide.interior_point_prompts`, no box). L_sam's weight decays over
training (:func:`sam_weight`), as the authors' code does."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam2_train.engine.settings import setting
from sam2_train.methods.registry import register
from sam2_train.methods.unet.base import mse_probs
from sam2_train.methods.unet.mean_teacher import MeanTeacher
from sam2_train.model.sam_guide import interior_point_prompts, sam_labels

__all__ = ["SemiSAM", "sam_weight"]


@register
class SemiSAM(MeanTeacher):
    name, summary = "semisam", "SemiSAM: mean teacher + consistency with a frozen SAM-2's labels"
    needs_guide = True

    @dataclass(frozen=True)
    class Conf:
        sam_lambda: float = setting(0.05, flag="-sam_lambda", type=float, group="SAM-2 guide",
                                    help="semisam: weight of L_sam at iteration 0, decaying as exp(-5 (t/max_iters)^2) "
                                         "(SemiSAM's code: 0.5 x 0.1 x sigmoid_rampup(max_iterations - iter_num))")

    def unlabeled_loss(self, batch_u, iteration, cw):
        x_w = batch_u["image_w"].flatten(0, 1)                                       # (N,1,S,S)
        heads = self.net.heads(x_w)
        loss = self.consistency(x_w, heads, iteration)
        p_s = heads[-1].detach().float().softmax(1)
        prompts = interior_point_prompts(p_s)
        labels, _ = sam_labels(self.guide.masks(x_w, prompts), prompts.valid, p_s)
        target = F.one_hot(labels, p_s.shape[1]).permute(0, 3, 1, 2).float()
        l_sam = mse_probs(heads, target, prompts.valid.any(1))
        w_sam = sam_weight(self.conf.sam_lambda, iteration, self.config.run.max_iters)
        return loss + w_sam * l_sam, {"l_sam": l_sam, "sam_prompted": prompts.valid.float().mean(),
                                      "sam_weight": torch.tensor(w_sam)}


def sam_weight(sam_lambda: float, iteration: int, total: int) -> float:
    """SemiSAM's L_sam weight at ``iteration``: ``sam_lambda * exp(-5 (t / total)^2)``, the decreasing mirror of
    the sigmoid ramp-up (SemiSAM's code: ``sigmoid_rampup(max_iterations - iter_num, ...)``, "Decrease during
    training"): the student leans on SAM-2 early and on its own mean teacher later."""
    t = min(iteration, total) / max(1, total)
    return sam_lambda * math.exp(-5.0 * t * t)
