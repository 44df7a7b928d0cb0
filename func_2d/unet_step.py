"""One 2D training step of a lightweight student (``-student unet | unetpp``): read :meth:`StudentUNet2D.forward`.

Methods: ``supervised``; ``mean_teacher`` (SSL4MIS: MSE between the student's and the EMA teacher's softmax on
noisy unlabeled images, weight ``-lambda_u`` 0.1 ramped up over the whole budget); ``fixmatch`` (UniMatch-style
weak-to-strong: the teacher's confident weak-view labels supervise two CutMix-ed strong views through Dice alone,
as UniMatch's ACDC code does); and the SAM-guided baselines, where a SAM-2 guide
(:class:`sam2_train.model.sam_guide.SAMGuide`, at ``-guide_size``) prompted from a student's prediction labels
images, each the way its paper does:

* ``km_onetime`` (Knowledge Mining, one-time): labeled data only until ``-km_start``; then SAM-2 labels every
  unlabeled slice once from the student's prediction (box + top points, :func:`box_point_prompts`; cached in
  ``<run>/pseudo``, :mod:`dataset.pseudo`) and the student trains on labeled + ``-lambda_u`` x pseudo-labeled
  slices (``batch_u`` then carries ``label``).
* ``km_continuous`` (Knowledge Mining, continuous): labeled data only until ``-km_start``; then a fresh SAM-2
  label each time an unlabeled slice comes back, prompted by the student's current prediction, weight
  ``-lambda_u`` (``-km_agree`` > 0, our extra: a class is trained on only where its SAM-2 mask agrees with the
  student's).
* ``semisam`` (SemiSAM): mean teacher plus L_sam, the MSE between the student's softmax and SAM-2's labels
  (one-hot), SAM-2 prompted by one click per class inside the student's mask (:func:`interior_point_prompts`),
  weight ``-sam_lambda`` decaying over the budget (:func:`sam2_train.model.semi.sam_weight`).
* ``sammatch`` (SAM-Match): weak-to-strong where, from ``-sam_start``, SAM-2 prompted by the boxes of the
  teacher's argmax (:func:`largest_component_boxes`, ``-bbox_shift``) replaces the labels of the strong views
  outside the CutMix box; the confidence mask, and the labels inside the box, stay the teacher's. With
  ``-guide_train 1`` (its default) SAM-2 is fine-tuned alongside: ``loss_x_sam`` (ground-truth boxes of the
  labeled slices) ``+ 0.25 loss_u_w_sam`` (its unlabeled masks against the teacher's argmax), its own SGD.

Every loss of a U-Net++ is the mean over its deep-supervision heads. Shapes: B labeled, N unlabeled slices,
K foreground classes, S image size.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dataset.pseudo import pseudo_label_dataset
from sam2_train.model.resize import resize_image
from func_2d.predict import coarse_to_labels, logits_to_labels
from sam2_train.engine.trainer import Task, TrainConfig
from sam2_train.model.cutmix import mix, sample_box_masks, sample_cutmix_partners
from sam2_train.model.losses import bce_dice_loss, ce_dice_loss
from sam2_train.model.sam_guide import (SAMGuide, box_point_prompts, interior_point_prompts, largest_component_boxes,
                                        sam_labels)
from sam2_train.model.semi import SAM_GUIDED, lambda_u, one_hot_fg, sam_weight
from sam2_train.model.sss_net import ModelConf
from sam2_train.model.students import UNetStudent


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


class StudentUNet2D(nn.Module):
    """The whole step of a lightweight student as one forward: ``forward(batch_l, batch_u, iteration) -> losses``.
    The EMA teacher and the SAM-2 ``guide`` are held outside the module tree. With SAM-Match's fine-tuned guide
    the returned ``loss`` also holds the guide's own loss (``loss_guide``; the two graphs share no parameter, so
    one backward gives each its gradients and the trainer steps the guide's optimiser too)."""

    def __init__(self, net: UNetStudent, teacher: UNetStudent, config: TrainConfig, autocast=contextlib.nullcontext,
                 guide: SAMGuide | None = None):
        super().__init__()
        self.net, self._teacher, self._guide, self.semi, self.autocast = net, (teacher,), (guide,), config.semi, autocast

    @property
    def teacher(self) -> UNetStudent:
        return self._teacher[0]

    @property
    def guide(self) -> SAMGuide:
        return self._guide[0]

    def forward(self, batch_l: dict, batch_u: dict | None, iteration: int) -> dict:
        semi, net = self.semi, self.net
        img_x, mask_x = batch_l["image"], batch_l["label"]                            # (B,1,S,S), (B,S,S)
        cw = semi.ce_class_weight(img_x.device)
        with self.autocast():
            # SSL4MIS's (and UniMatch's) supervised loss 0.5 x (CE + Dice): with SGD 0.01 the scale is the step size
            loss_x = 0.5 * heads_loss(net.heads(img_x), mask_x, class_weight=cw)
            out = {"loss": loss_x, "loss_x": loss_x}
            guide_trains = semi.guide_train and self.guide is not None
            loss_g = self.guide_labeled_loss(img_x, mask_x) if guide_trains else None
            km_waits = semi.method == "km_continuous" and iteration < semi.km_start
            if batch_u is not None and not km_waits:   # supervised, or Knowledge Mining before -km_start: none
                if semi.method == "km_onetime":            # cached one-time SAM-2 labels
                    loss_u = heads_loss(net.heads(batch_u["image"]), batch_u["label"], class_weight=cw)
                    loss_u, logs = lambda_u(semi, iteration) * loss_u, {}
                else:
                    x_w = batch_u["image_w"].flatten(0, 1)                               # (N,1,S,S)
                    if semi.method in ("mean_teacher", "semisam"):
                        loss_u, logs = self.mean_teacher(x_w, iteration)
                    elif semi.method == "km_continuous":
                        loss_u, logs = self.km_continuous(x_w, iteration, cw)
                    else:                                   # fixmatch, sammatch
                        loss_u, logs = self.weak_to_strong(x_w, batch_u, iteration)
                if "loss_u_w_sam" in logs:
                    loss_g = loss_g + semi.guide_u_weight * logs["loss_u_w_sam"]
                    logs["loss_u_w_sam"] = logs["loss_u_w_sam"].detach()
                out = {"loss": loss_x + loss_u, "loss_x": loss_x, "loss_u": loss_u, **logs}
            if loss_g is not None:
                out["loss"], out["loss_guide"] = out["loss"] + loss_g, loss_g.detach()
        return out

    # ------------------------------------------------------------------ unlabeled losses (weights included)
    def mean_teacher(self, x_w: torch.Tensor, iteration: int):
        """lambda_u(t) * MSE(student, teacher on x_w + noise) [+ sam_weight(t) * L_sam for SemiSAM]."""
        heads = self.net.heads(x_w)
        noise = (torch.randn_like(x_w) * 0.1).clamp(-0.2, 0.2)                      # SSL4MIS's input noise
        with torch.no_grad():
            p_t = self.teacher(x_w + noise).float().softmax(1)
        loss = lambda_u(self.semi, iteration) * mse_probs(heads, p_t)
        if self.semi.method != "semisam":
            return loss, {}
        p_s = heads[-1].detach().float().softmax(1)
        prompts = interior_point_prompts(p_s)
        labels, _ = sam_labels(self.guide.masks(x_w, prompts), prompts.valid, p_s)
        target = F.one_hot(labels, p_s.shape[1]).permute(0, 3, 1, 2).float()
        l_sam = mse_probs(heads, target, prompts.valid.any(1))
        w_sam = sam_weight(self.semi, iteration)
        return loss + w_sam * l_sam, {"l_sam": l_sam.detach(), "sam_prompted": prompts.valid.float().mean(),
                                      "sam_weight": torch.tensor(w_sam)}

    def km_continuous(self, x_w: torch.Tensor, iteration: int, cw):
        """lambda_u * CE+Dice against a fresh SAM-2 label (on the classes where SAM-2 agrees with the student when
        ``-km_agree`` > 0)."""
        heads = self.net.heads(x_w)
        p_s = heads[-1].detach().float().softmax(1)
        prompts = box_point_prompts(p_s, thresh=self.semi.km_thresh, num_points=self.semi.km_points)
        labels, _ = sam_labels(self.guide.masks(x_w, prompts), prompts.valid, p_s)
        logs, valid = {"sam_prompted": prompts.valid.float().mean()}, None
        if self.semi.km_agree > 0:
            student, k = p_s.argmax(1), p_s.shape[1] - 1
            agree = class_dice(labels, student, k) >= self.semi.km_agree                 # (N,K)
            rejected = one_hot_fg(labels, k).bool() | one_hot_fg(student, k).bool()      # (N,K,S,S)
            valid = ~(rejected & ~agree[..., None, None]).any(1)                          # (N,S,S)
            logs.update(km_agree=agree.float().mean(), mask_ratio=valid.float().mean())
        return lambda_u(self.semi, iteration) * heads_loss(heads, labels, valid, cw), logs

    def weak_to_strong(self, x_w: torch.Tensor, batch_u: dict, iteration: int):
        """lambda_u * Dice of the two CutMix-ed strong views against the teacher's confident weak-view labels.

        Dice alone on the confident pixels, as UniMatch's ACDC code trains its unlabeled views: with CE on them
        too, a U-Net from scratch is pulled to background by the few (background) pixels its early teacher is
        sure of (3 ACDC cases: 1.1 % validation Dice after 125 iterations against 42.6 % supervised).
        SAM-Match (from ``-sam_start``): outside the pasted box the labels are SAM-2's, prompted by the boxes of
        the teacher's argmax; inside it they stay the teacher's labels of the pasted image, and the confidence
        is the teacher's everywhere (the authors' ``mask_u_w_cutmixed1[cutmix_box1 == 1] = mask_u_w_mix[...]``,
        ``conf_u_w_cutmixed1 = conf_u_w``)."""
        logs = {}
        with torch.no_grad():
            p_w = self.teacher(x_w).float().softmax(1)                                # (N,K+1,S,S)
            conf, labels = p_w.max(1)
        refined = labels
        if self.semi.method == "sammatch" and iteration >= self.semi.sam_start:
            refined, logs = self.sam_match_labels(x_w, p_w, labels)
        n, size = x_w.shape[0], x_w.shape[-1]
        partner = torch.cat([sample_cutmix_partners(n), sample_cutmix_partners(n) + n]).to(x_w.device)   # (2N,)
        box = sample_box_masks(2 * n, size, self.semi.cutmix_p, x_w.device)
        x_s = mix(torch.cat([batch_u["image_s1"].flatten(0, 1), batch_u["image_s2"].flatten(0, 1)]), partner, box)
        own, pasted = torch.cat([refined, refined]), torch.cat([labels, labels])
        y_s = torch.where(box, pasted[partner], own)                # the pasted box: the teacher's own labels
        c_s = mix(torch.cat([conf, conf]), partner, box)
        ok = c_s >= self.semi.tau_u
        loss = lambda_u(self.semi, iteration) * heads_loss(self.net.heads(x_s), y_s, ok, ce_weight=0.0)
        return loss, {"mask_ratio": ok.float().mean(), **logs}

    def sam_match_labels(self, x_w: torch.Tensor, p_w: torch.Tensor, labels: torch.Tensor):
        """SAM-2's labels (N,S,S) of the weak views, prompted by the boxes of the teacher's argmax ``labels``;
        with a fine-tuned guide also its loss against those labels (``loss_u_w_sam``: BCE+Dice of every prompted
        class, no confidence mask, as the authors' CE+Dice of SAM's output against ``mask_u_w``)."""
        k = p_w.shape[1] - 1
        prompts = largest_component_boxes(labels, k, self.semi.bbox_shift)
        logits = self.guide.masks(x_w, prompts)                                         # (N,K,S,S)
        refined, _ = sam_labels(logits.detach(), prompts.valid, p_w)
        logs = {"sam_prompted": prompts.valid.float().mean()}
        if logits.requires_grad:
            logs["loss_u_w_sam"] = bce_dice_loss(logits, one_hot_fg(labels, k), prompts.valid)
        return refined, logs

    def guide_labeled_loss(self, img_x: torch.Tensor, mask_x: torch.Tensor) -> torch.Tensor:
        """SAM-Match's ``loss_x_sam``: the fine-tuned guide prompted by ground-truth boxes of the labeled slices
        (every present class; the authors' 3-pixel margin), BCE+Dice against the class masks."""
        k = self.net.num_classes
        prompts = largest_component_boxes(mask_x, k, 3)
        return bce_dice_loss(self.guide.masks(img_x, prompts), one_hot_fg(mask_x, k), prompts.valid)


# ---------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict(net: UNetStudent, image: np.ndarray, *, config: TrainConfig, infer: str, device, autocast,
            guide: SAMGuide | None = None) -> np.ndarray:
    """Label volume (D,H,W) int64 of an image volume (D,H,W) in [0,1], slice by slice, from the image alone.

    ``infer="student"``: the student's argmax; ``"sam_refine"``: the student's prediction prompts the frozen
    SAM-2 (Knowledge Mining's prompts, ties broken with ``-seed``) and SAM-2's masks are the labels. Labels go
    back to the native size by the protocol's rule (:func:`func_2d.predict.coarse_to_labels`)."""
    net.eval()
    d, h, w = image.shape
    size, chunk = net.image_size, max(8, config.run.batch_size)
    x = resize_image(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)[:, None], size).clamp(0, 1)
    with autocast():
        probs = torch.cat([net(x[i:i + chunk]).float().softmax(1) for i in range(0, d, chunk)])    # (D,K+1,S,S)
    if infer == "student":
        return coarse_to_labels(probs, (h, w), size, config.run.protocol).cpu().numpy()
    if infer != "sam_refine":
        raise ValueError(f"-infer {infer}: a -student unet/unetpp predicts with student or sam_refine")
    if guide is None:
        raise ValueError("-infer sam_refine needs the frozen SAM-2 of -sam_config/-sam_ckpt")
    ties = torch.Generator().manual_seed(config.run.seed)
    prompts = box_point_prompts(probs, thresh=config.semi.km_thresh, num_points=config.semi.km_points, generator=ties)
    logits = torch.cat([guide.masks(x[i:i + chunk], prompts[i:i + chunk]) for i in range(0, d, chunk)])   # (D,K,S,S)
    return logits_to_labels(logits, (h, w), size, config.run.protocol).cpu().numpy()


def unlabeled_items(config: TrainConfig) -> int:
    """Unlabeled items per step: one-time pseudo-labeled slices (``km_onetime``), else slabs as the SAM-2 step."""
    if config.semi.method == "km_onetime":
        return config.run.batch_size_u
    return max(1, config.run.batch_size_u // config.semi.slab_len)


def pseudo_label_start(config: TrainConfig) -> int | None:
    """The iteration at which ``km_onetime`` labels the unlabeled slices once (None for the other methods)."""
    return config.semi.km_start if config.semi.method == "km_onetime" else None


def pseudo_labels(run_path: str, unlabeled, label_volume, config: TrainConfig, **kw):
    """``km_onetime``'s labeled + pseudo-labeled data: the unlabeled volumes labeled once (cached in the run)."""
    return pseudo_label_dataset(run_path, unlabeled.refs, label_volume, config.model.image_size, seed=config.run.seed,
                                **kw)


def needs_guide(config: TrainConfig) -> bool:
    """Whether a lightweight-student run loads the frozen SAM-2: SAM-guided methods, or ``-infer sam_refine``."""
    return config.semi.method in SAM_GUIDED or config.run.infer == "sam_refine"


def build_student(conf: ModelConf, device="cpu", sam_ckpt: str | None = None) -> UNetStudent:
    """The lightweight student of ``conf.student`` (random init; ``sam_ckpt`` is SAM-2's and not used here)."""
    return UNetStudent(conf.student, conf.num_classes, conf.image_size).to(device)


TASK_UNET_2D = Task(script="2d", make_student=StudentUNet2D, predict=predict, unlabeled_batch=unlabeled_items,
                    build_net=build_student, infer_modes=("student", "sam_refine"), needs_guide=needs_guide,
                    pseudo_label_start=pseudo_label_start, pseudo_labels=pseudo_labels)
