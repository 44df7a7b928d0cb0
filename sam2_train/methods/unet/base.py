"""The step of a lightweight student (``-student unet | unetpp``, 2D) and its supervised method: read
:meth:`UNetMethod.forward`. The labeled loss is SSL4MIS's (and UniMatch's) 0.5 x (CE + Dice); a method adds its
unlabeled loss (:meth:`UNetMethod.unlabeled_loss`, weights included) and, if it trains a SAM-2 guide, the guide's
loss (:meth:`UNetMethod.guide_loss`: the two graphs share no parameter, so one backward gives each its
gradients). Every loss of a U-Net++ is the mean over its deep-supervision heads. Shapes: B labeled, N unlabeled
slices, K foreground classes, S image size.
"""
from __future__ import annotations

import torch

from sam2_train.methods.base import Method
from sam2_train.methods.registry import register
from sam2_train.model.losses import ce_dice_loss
from sam2_train.model.prompts import one_hot_fg

__all__ = ["UNetMethod", "Supervised", "heads_loss", "mse_probs", "class_dice", "LABELED_WEIGHT"]

#: SSL4MIS's (and UniMatch's) weight of the labeled loss, 0.5 x (CE + Dice). ``-lambda_u`` of a method whose
#: unlabeled loss is of the same kind (pseudo-labels: Knowledge Mining, UniMatch-style) is relative to it: the
#: unlabeled term is ``lambda_u * LABELED_WEIGHT * loss``, so a pseudo-labeled slice weighs ``lambda_u`` times a
#: ground-truth one.
LABELED_WEIGHT = 0.5


def heads_loss(heads: list[torch.Tensor], labels: torch.Tensor, valid: torch.Tensor | None = None,
               class_weight: torch.Tensor | None = None, ce_weight: float = 1.0) -> torch.Tensor:
    """ce_weight * CE + Dice (:func:`ce_dice_loss`) of every head (B,K+1,S,S) against labels (B,S,S) on ``valid``
    pixels (B,S,S), averaged over heads."""
    losses = [ce_dice_loss(h, labels, valid, class_weight=class_weight, ce_weight=ce_weight) for h in heads]
    return sum(losses) / len(losses)


def mse_probs(heads: list[torch.Tensor], target: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between every head's softmax (N,K+1,S,S) and ``target`` probabilities, over the images ``rows`` (N,)
    bool (all when None), averaged over heads; 0 without a row."""
    w = None if rows is None else rows.float()[:, None, None, None]
    out = []
    for h in heads:
        err = (h.float().softmax(1) - target) ** 2
        out.append(err.mean() if w is None else (err * w).sum() / (w.sum() * err[0].numel()).clamp_min(1.0))
    return sum(out) / len(out)


def class_dice(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Per-image, per-class Dice of two label maps (N,S,S) -> (N,K); 1 where the class is in neither."""
    oa, ob = one_hot_fg(a, k), one_hot_fg(b, k)
    inter, total = (oa * ob).sum((2, 3)), (oa + ob).sum((2, 3))
    return torch.where(total > 0, 2 * inter / total.clamp_min(1.0), torch.ones_like(total))

class UNetMethod(Method):
    """A lightweight student's step; subclasses implement :meth:`unlabeled_loss`."""
    students = ("unet", "unetpp")
    scripts = ("2d",)

    @classmethod
    def unlabeled_items(cls, config) -> int:
        """Slabs of ``-slab_len`` slices, as the SAM-2 step draws them."""
        return max(1, config.run.batch_size_u // config.data.slab_len)

    def forward(self, batch_l: dict, batch_u: dict | None, iteration: int) -> dict:
        img_x, mask_x = batch_l["image"], batch_l["label"]                            # (B,1,S,S), (B,S,S)
        cw = self.semi.ce_class_weight(img_x.device)
        with self.autocast():
            loss_x = LABELED_WEIGHT * heads_loss(self.net.heads(img_x), mask_x, class_weight=cw)
            out, logs = {"loss": loss_x, "loss_x": loss_x}, {}
            if batch_u is not None and self.uses_unlabeled(iteration):
                loss_u, logs = self.unlabeled_loss(batch_u, iteration, cw)
                out.update(loss=loss_x + loss_u, loss_u=loss_u)
            loss_g = self.guide_loss(img_x, mask_x, logs)
            if loss_g is not None:
                out["loss"], out["loss_guide"] = out["loss"] + loss_g, loss_g.detach()
        return {**out, **{k: (v.detach() if torch.is_tensor(v) else v) for k, v in logs.items()}}

    def uses_unlabeled(self, iteration: int) -> bool:
        """Whether the unlabeled batch of ``iteration`` is trained on (Knowledge Mining: after its start)."""
        return True

    def unlabeled_loss(self, batch_u: dict, iteration: int, cw) -> tuple[torch.Tensor, dict]:
        """(weighted unlabeled loss, logs)."""
        raise NotImplementedError

    def guide_loss(self, img_x: torch.Tensor, mask_x: torch.Tensor, logs: dict) -> torch.Tensor | None:
        """The loss of a guide the method fine-tunes (None: the guide, if any, is frozen)."""
        return None


@register
class Supervised(UNetMethod):
    name, summary = "supervised", "labeled data only"
    needs_unlabeled = False
