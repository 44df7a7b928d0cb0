"""Knowledge Mining (Mao et al., arXiv 2503.06816): a U-Net++ student trained on the labeled subset first (until
``-km_start``), then on SAM-2's labels of the unlabeled slices too, down-weighted by ``-lambda_u`` relative to the
labeled loss (a pseudo-labeled slice weighs ``lambda_u`` times a ground-truth one; 0.5: the paper's value is not
in the text available to us). SAM-2 stays frozen and is prompted by the student's prediction: the outer box
of each class's thresholded mask plus its most probable pixels (:func:`sam2_train.model.sam_guide.box_point_prompts`,
``-km_thresh``, ``-km_points``; also the prompts of ``-infer sam_refine``).

* ``km_onetime``: at ``-km_start`` SAM-2 labels every unlabeled slice once from the EMA student's prediction
  (cached in ``<run>/pseudo``, reused on resume) and the student trains on labeled + pseudo-labeled slices.
* ``km_continuous``: from ``-km_start`` a fresh SAM-2 label each time an unlabeled slice comes back, prompted by
  the student's current prediction (``-km_agree`` > 0, our extra: a class is trained on only where its SAM-2
  mask agrees with the student's).
"""
from __future__ import annotations

from dataclasses import dataclass

from sam2_train.engine.settings import nonneg_int, setting, unit_float
from sam2_train.methods.base import lambda_u
from sam2_train.methods.registry import register
from sam2_train.methods.unet.base import LABELED_WEIGHT, UNetMethod, class_dice, heads_loss
from sam2_train.model.prompts import one_hot_fg
from sam2_train.model.sam_guide import box_point_prompts, sam_labels


@dataclass(frozen=True)
class KMConf:
    km_start: int = setting(0, flag="-km_start", type=nonneg_int, preset=True, group="SAM-2 guide",
                            help="km_onetime / km_continuous: the iteration from which SAM-2's labels are used "
                                 "(one-time: made then); labeled data only before, as the paper first trains the "
                                 "student on the labeled subset (default half of -max_iters)")


class KnowledgeMining(UNetMethod):
    needs_guide = True
    Conf = KMConf

    @classmethod
    def defaults(cls, config) -> dict:
        return {"semi": {"lambda_u": 0.5}, "method": {"km_start": config.run.max_iters // 2}}

    def uses_unlabeled(self, iteration: int) -> bool:
        return iteration >= self.conf.km_start


@register
class KMOneTime(KnowledgeMining):
    name, summary = "km_onetime", "Knowledge Mining, one-time SAM-2 labels"
    unlabeled_views = False          # the unlabeled batches are the pseudo-labeled slices (on_iteration_start)

    @classmethod
    def unlabeled_items(cls, config) -> int:
        return config.run.batch_size_u

    def on_iteration_start(self, loop, iteration: int) -> None:
        """At ``-km_start`` (or on resuming after it): the unlabeled slices labeled once by SAM-2 refining the EMA
        student's prediction, or read back from ``<run>/pseudo``; their batches follow."""
        if iteration >= self.conf.km_start and not loop.has_unlabeled:
            dataset = loop.splits.pseudo_labeled(
                loop.run_dir.path, lambda image: loop.predict(image, "sam_refine"), self.config.model.image_size,
                seed=self.config.run.seed, iteration=iteration, is_main=loop.dist.is_main, log=loop.run_dir.log,
                wait=loop.barrier)
            loop.set_unlabeled(dataset, start_iter=iteration - self.conf.km_start)

    def unlabeled_loss(self, batch_u, iteration, cw):
        weight = LABELED_WEIGHT * lambda_u(self.semi, iteration)
        return weight * heads_loss(self.net.heads(batch_u["image"]), batch_u["label"], class_weight=cw), {}


@register
class KMContinuous(KnowledgeMining):
    name, summary = "km_continuous", "Knowledge Mining, SAM-2 labels made afresh each time a slice comes back"

    @dataclass(frozen=True)
    class Conf(KMConf):
        km_agree: float = setting(0.0, flag="-km_agree", type=unit_float, group="SAM-2 guide",
                                  help="km_continuous, our extra (not in the paper): a class of a fresh SAM-2 label is "
                                       "trained on only where its Dice with the student's current prediction is at "
                                       "least this (0 = off)")

    def unlabeled_loss(self, batch_u, iteration, cw):
        x_w = batch_u["image_w"].flatten(0, 1)                                       # (N,1,S,S)
        heads = self.net.heads(x_w)
        p_s = heads[-1].detach().float().softmax(1)
        infer = self.config.infer
        prompts = box_point_prompts(p_s, thresh=infer.km_thresh, num_points=infer.km_points)
        labels, _ = sam_labels(self.guide.masks(x_w, prompts), prompts.valid, p_s)
        logs, valid = {"sam_prompted": prompts.valid.float().mean()}, None
        if self.conf.km_agree > 0:
            student, k = p_s.argmax(1), p_s.shape[1] - 1
            agree = class_dice(labels, student, k) >= self.conf.km_agree                 # (N,K)
            rejected = one_hot_fg(labels, k).bool() | one_hot_fg(student, k).bool()      # (N,K,S,S)
            valid = ~(rejected & ~agree[..., None, None]).any(1)                          # (N,S,S)
            logs.update(km_agree=agree.float().mean(), mask_ratio=valid.float().mean())
        return LABELED_WEIGHT * lambda_u(self.semi, iteration) * heads_loss(heads, labels, valid, cw), logs
