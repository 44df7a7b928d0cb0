"""The semi-supervised step of the SAM-2 student, shared by slices (2D) and volumes (3D): read
:meth:`SAM2Step.forward` top to bottom.

Labeled rows: encoder -> DFE(W=S) -> coarse head (CE+Dice) + SAM-2 masks of the prompted classes (the
subclass's :meth:`~SAM2Step.labeled_mask_loss`: the decoder in 2D, memory tracking in 3D). Unlabeled views: the
EMA teacher predicts the weak view with its own prompts (:meth:`~SAM2Step.teacher_targets`; its masks are the
subclass's :meth:`~SAM2Step.teacher_masks`), pseudo-labels, confidences and prompts are carried to two CutMix-ed
strong views, and the student is trained on them through DFE (:func:`student_strong_views`: DFE(W, S1),
DFE(W, S2) by default, ``-dfe_views``) against the confident pixels (``-tau_u``).
``loss = loss_x + lambda_u(it) * loss_u``.

Shapes: N rows (2D: slices; 3D: clips x T frames, clip-major), K foreground classes, S image size, s = S/4
coarse/low-res size. Prompts are in model-input pixels.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

import torch
from torch.profiler import record_function

from sam2_train.engine.settings import positive_int, setting, str2bool, unit_float
from sam2_train.methods.base import Method, lambda_u
from sam2_train.model.cutmix import clip_cutmix_partners, mix
from sam2_train.model.labels import body_mask
from sam2_train.model.losses import ce_dice_loss
from sam2_train.model.pcsw import image_prompts
from sam2_train.model.prompts import Prompts, mix_prompts
from sam2_train.model.resize import resize_label, upsample

__all__ = ["SAM2Conf", "SAM2Step", "UnlabeledTargets", "SupervisedVariant", "FixMatchVariant", "SSSVariant",
           "SSSLabeledOnlyVariant", "student_strong_views", "pcsw_rates"]


@dataclass(frozen=True)
class SAM2Conf:
    """Settings of the SAM-2 student's step (``-method supervised | fixmatch | sss``)."""
    p_gt: float = setting(0.5, flag="-p_gt", type=unit_float, group="method",
                          help="labeled images: probability of a (jittered) ground-truth prompt instead of the model's "
                               "own (PCSW or coarse boxes)")
    out_size: int = setting(1024, flag="-out_size", type=positive_int, preset=True, group="seed",
                            help="size at which labeled mask losses are computed (default: image_size)")
    pcsw: bool = setting(True, flag="-pcsw", type=str2bool, preset=True, group="method", metavar="{0,1}",
                         help="PCSW prompts in training, for the labeled images and the teacher (0: unconstrained "
                              "coarse boxes; part of -method sss, default 1 there; the other methods refuse -pcsw 1). "
                              "Inference is -infer's")
    tau_fallback: float = setting(0.98, flag="-tau_fallback", type=unit_float, group="method",
                                  help="pseudo-label threshold of classes prompted by a PCSW fallback (stricter when "
                                       "> -tau_u)")
    unsup_encoder_grad: bool = setting(False, flag="-unsup_encoder_grad", type=str2bool, group="method",
                                       metavar="{0,1}",
                                       help="let the unlabeled loss back-propagate into the image encoder")
    dfe_views: str = setting("cross", flag="-dfe_views", choices=("cross", "own", "joint"), group="method",
                             help="unlabeled views through DFE: cross (default, the paper's pairing) = DFE(W, S) for "
                                  "the strong branch; own = each strong view enhanced alone, by the test-time "
                                  "operator (the weak view never reaches the student's strong branch); joint = "
                                  "DFE(W, S) gives W' and S' in one forward and the pseudo-labels come from that W' "
                                  "(detached, UniMatch-style), the teacher giving the prompts only "
                                  "(docs/evidence.md)")
    unsup_ce: float = setting(1.0, flag="-unsup_ce", type=float, group="method",
                              help="weight of the CE term in the coarse head's unlabeled loss (0: Dice only)")


@dataclass
class UnlabeledTargets:
    """What the teacher hands the student; rows of the strong views are stacked (view 1 rows, then view 2).

    images (3N,1,S,S): weak, mixed strong 1, mixed strong 2. box_masks (2N,S,S) bool: CutMix region of each
    strong row. partner (2N,): the stacked row pasted into each box. labels (2N,s,s) int64 and conf (2N,s,s)
    float: mixed pseudo-labels and their confidences. prompts (2N,K): mixed prompts. num_clips: 3D only, the
    number of strong clips (2*Bu). weak_backbone: the teacher's weak-view backbone features (raw FPN levels,
    before conv_s0/conv_s1) when the student may reuse them (frozen image encoder). pcsw_status (n,K)."""
    images: torch.Tensor
    box_masks: torch.Tensor
    partner: torch.Tensor
    labels: torch.Tensor
    conf: torch.Tensor
    prompts: Prompts
    num_clips: int = 0
    weak_backbone: list | None = None
    pcsw_status: torch.Tensor | None = None


class SAM2Step(Method):
    """The shared step; a subclass gives the rows of a labeled batch and the masks of prompted classes."""
    students = ("sam2",)
    Conf = SAM2Conf
    requires = {"model.dfe": False, "method.pcsw": False}
    requires_why = "DFE and PCSW are parts of SSS"

    def __init__(self, net, config, **kw):
        super().__init__(net, config, **kw)
        self.pcsw = config.pcsw
        # a frozen image encoder is the same in teacher and student: the teacher's weak-view backbone pass serves
        # both (each applies its own conv_s0/conv_s1, which train)
        self.frozen_encoder = config.model.freeze_encoder

    @classmethod
    def defaults(cls, config) -> dict:
        """Labeled masks at the model size; DFE on for the method that does not refuse it (SSS)."""
        return {"method": {"out_size": config.model.image_size}, **({} if cls.requires else {"model": {"dfe": True}})}

    def forward(self, batch_l: dict, batch_u: dict | None, iteration: int) -> dict:
        net, semi, k, out_size = self.net, self.semi, self.net.num_classes, self.conf.out_size
        img_x, mask_x, clips = self.labeled_rows(batch_l)                         # (N,1,S,S), (N,S,S), B
        cw = semi.ce_class_weight(img_x.device)                                   # (K+1,) or None
        with self.autocast():
            # labeled: coarse head (CE+Dice) + SAM-2 masks (BCE+Dice) of the prompted classes, prompted by jittered
            # ground truth with probability p_gt, else by the model's own prompts (as at test time)
            enc_x = net.encode(img_x)
            feats_x, _ = net.enhance(enc_x.feats)
            pred_x = net.coarse(feats_x)                                          # (N,K+1,s,s)
            probs_x = pred_x.detach().float().softmax(1)
            if self.pcsw.calibrate:
                net.update_class_conf(probs_x, mask_x)                            # PCSW gates (buffer)
            y = resize_label(mask_x, out_size)
            loss_mask_x = self.labeled_mask_loss(enc_x.replace(feats_x), probs_x, img_x, mask_x, y, clips)
            with record_function("sss.loss"):
                loss_x = ce_dice_loss(upsample(pred_x, out_size), y, class_weight=cw) + loss_mask_x
            if batch_u is None:
                return {"loss": loss_x, "loss_x": loss_x}

            # unlabeled: the teacher's pseudo-labels on the weak view, carried to two CutMix-ed strong views;
            # the student: the views through the encoder (no autograd by default) and DFE (-dfe_views: paired with
            # the weak view, DFE(W, S1), DFE(W, S2), or each strong view alone);
            # conf_ok (2N,s,s): the confident pseudo-label pixels
            u = self.teacher_targets(batch_u)
            feats_u_s, feats_u_w = student_strong_views(net, u, self.conf.unsup_encoder_grad, self.conf.dfe_views)
            if self.conf.dfe_views == "joint":
                u = self.own_weak_targets(feats_u_w, u)                           # labels from this forward's W'
            conf_ok = u.conf >= semi.tau_u
            loss_mask_u = self.unlabeled_mask_loss(feats_u_s, u, conf_ok)
            with record_function("sss.loss"):
                loss_u = ce_dice_loss(net.coarse(feats_u_s.feats), u.labels, conf_ok, class_weight=cw,
                                      ce_weight=self.conf.unsup_ce) + loss_mask_u
            loss = loss_x + lambda_u(semi, iteration) * loss_u
        return {"loss": loss, "loss_x": loss_x, "loss_u": loss_u, "mask_ratio": conf_ok.float().mean().detach(),
                **pcsw_rates(u.pcsw_status, k)}

    @torch.no_grad()
    def teacher_targets(self, views: dict) -> UnlabeledTargets:
        """Teacher pass on the weak view (``image_w``, ``image_s1``, ``image_s2``: (Bu,L,1,S,S), L slices of a
        slab or frames of a clip) -> prompts (PCSW, or coarse boxes without ``-pcsw``), pseudo-labels and
        confidences (:meth:`teacher_masks`); then CutMix of both strong views by the same boxes, each row taking
        row t of another slab/clip (:func:`clip_cutmix_partners`)."""
        teacher = self.teacher
        bu, length = views["image_w"].shape[:2]
        img_w, img_s1, img_s2 = (views[key].flatten(0, 1) for key in ("image_w", "image_s1", "image_s2"))
        n, size = img_w.shape[0], img_w.shape[-1]
        raw = teacher.backbone(img_w)
        enc = teacher.project(raw)
        feats_w, _ = teacher.enhance(enc.feats)
        probs_w = teacher.coarse(feats_w).float().softmax(1)                      # (N,K+1,s,s)
        s = probs_w.shape[-1]
        prompts = image_prompts(probs_w.view(bu, length, *probs_w.shape[1:]), size, self.pcsw, self.conf.pcsw,
                                body=body_mask(img_w, s).view(bu, length, s, s), class_conf=teacher.gates(self.pcsw))
        labels, conf, prompts_mix = self.teacher_masks(teacher, enc.replace(feats_w), prompts, probs_w, bu)
        partner = torch.cat([clip_cutmix_partners(bu, length, img_w.device),
                             clip_cutmix_partners(bu, length, img_w.device) + n])                    # (2N,)
        box_masks = self.box_masks(bu, length, size, img_w.device)                                     # (2N,S,S)
        two = lambda t: None if t is None else torch.cat([t, t])                                      # noqa: E731
        mixed = Prompts.single_point(two(prompts_mix.boxes), two(prompts_mix.points[..., 0, :]),
                                     two(prompts_mix.valid), masks=two(prompts_mix.masks),
                                     fallback=two(prompts_mix.fallback))
        return UnlabeledTargets(
            images=torch.cat([img_w, mix(torch.cat([img_s1, img_s2]), partner, box_masks)]), box_masks=box_masks,
            partner=partner, labels=mix(two(labels), partner, box_masks), conf=mix(two(conf), partner, box_masks),
            prompts=mix_prompts(mixed, partner, box_masks, size, self.pcsw.margin),
            num_clips=self.strong_clips(bu),
            weak_backbone=raw.feats if self.frozen_encoder and self.conf.dfe_views != "own" else None,
            pcsw_status=prompts.status)

    @torch.no_grad()
    def own_weak_targets(self, feats_w, u: UnlabeledTargets) -> UnlabeledTargets:
        """``-dfe_views joint``: the pseudo-labels and confidences of the 2N strong rows from the student's own W'
        (``feats_w``, the CutMix-ed weak features enhanced against each strong view in the same forward), through
        the coarse head and the masks of the teacher's mixed prompts; no gradient flows through them."""
        feats_w = feats_w.replace([f.detach() for f in feats_w.feats])
        probs = self.net.coarse(feats_w.feats).float().softmax(1)                  # (2N,K+1,s,s)
        labels, conf = self.prompted_labels(self.net, feats_w, u.prompts, probs, u.num_clips)
        return dataclasses.replace(u, labels=labels, conf=conf)

    # ------------------------------------------------------------------ what 2D and 3D implement
    def labeled_rows(self, batch_l: dict):
        """(images (N,1,S,S), labels (N,S,S), number of labeled slices or clips B)."""
        raise NotImplementedError

    def labeled_mask_loss(self, feats, probs, images, labels, y, clips) -> torch.Tensor:
        raise NotImplementedError

    def teacher_masks(self, teacher, feats, prompts: Prompts, probs: torch.Tensor, bu: int):
        """(pseudo-labels (N,s,s), confidences (N,s,s), the prompts to mix into the strong views)."""
        raise NotImplementedError

    def prompted_labels(self, net, feats, prompts: Prompts, probs: torch.Tensor, num_clips: int):
        """Pseudo-labels (N,s,s) and confidences (N,s,s) of ``net``'s masks for ``prompts`` (used as given) fused
        with its coarse probabilities ``probs`` (N,K+1,s,s); ``num_clips``: 3D only."""
        raise NotImplementedError

    def box_masks(self, bu: int, length: int, size: int, device) -> torch.Tensor:
        raise NotImplementedError

    def strong_clips(self, bu: int) -> int:
        return 0

    def unlabeled_mask_loss(self, feats, u: UnlabeledTargets, conf_ok: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class SupervisedVariant:
    """``-method supervised`` of a SAM-2 step (mixed in before the 2D / 3D step class)."""
    name, summary = "supervised", "labeled data only"
    needs_unlabeled = False


class FixMatchVariant:
    """``-method fixmatch`` of a SAM-2 step."""
    name, summary = "fixmatch", "weak-to-strong (UniMatch-style) without DFE and PCSW"


class SSSVariant:
    """``-method sss`` of a SAM-2 step: DFE and PCSW are its own (it refuses neither)."""
    name, summary = "sss", "SSS: weak-to-strong with DFE and PCSW prompts"
    requires: dict = {}


class SSSLabeledOnlyVariant:
    """``-method sss_labeled_only``: the SSS network (DFE in its single-view form, PCSW prompts for the labeled
    images' own prompts) trained on labeled data only, no unlabeled loss. SSS minus this row is what the unlabeled
    scans add; supervised minus it is what the DFE adapter's capacity adds."""
    name, summary = "sss_labeled_only", "the SSS network (DFE + PCSW) on labeled data only"
    needs_unlabeled = False
    requires: dict = {}


def student_strong_views(net, u: UnlabeledTargets, encoder_grad: bool, views: str = "cross"):
    """The student's features of the 2N strong rows after DFE, and of the 2N CutMix-ed weak rows (W', or None with
    ``views="own"``), as ImageFeatures (with the encoder's positional encodings, which the 3D tracker needs).

    ``u.images`` (3N,1,S,S) = weak, mixed strong 1, mixed strong 2; the encoder runs without autograd unless
    ``encoder_grad``; the weak features are CutMix-ed like the strong images so DFE(W, S1), DFE(W, S2) pair
    aligned pixels (``views`` "cross" and "joint"); with ``views="own"`` each strong view is enhanced alone, by the
    single-view operator of labeled and test images, and the weak view takes no part. With ``u.weak_backbone`` (a
    frozen encoder: the teacher's backbone features are the student's) only the 2N strong images are encoded and
    the student's own conv_s0/conv_s1 (decoder parameters, which train) project the weak levels 0 and 1, so W and
    S come from the same network."""
    images, n = u.images, u.images.shape[0] // 3
    with contextlib.nullcontext() if encoder_grad else torch.no_grad():
        if views == "own":
            enc = net.encode(images[n:])
        elif u.weak_backbone is None:
            enc = net.encode(images)
        else:
            enc_s = net.encode(images[n:])
            enc_w = net.project(enc_s.replace([w.to(s.dtype) for w, s in zip(u.weak_backbone, enc_s.feats)]))
            enc = enc_s.replace([torch.cat([w, s]) for w, s in zip(enc_w.feats, enc_s.feats)])
    if views == "own":
        return enc.replace(net.enhance(enc.feats)[1]), None
    fw = [mix(torch.cat([f[:n], f[:n]]), u.partner, u.box_masks) for f in enc.feats]
    strong = enc.replace([f[n:] for f in enc.feats])
    fw2, fs2 = net.enhance(fw, strong.feats)
    return strong.replace(fs2), strong.replace(fw2)


PCSW_STATUS = {"accept": 1, "fallback": 2, "reject": 3}


def pcsw_rates(status: torch.Tensor | None, k: int) -> dict:
    """Per-class PCSW rates over slabs/clips where the coarse head predicts the class: status (n,K) int64
    (:class:`Prompts` ``status``) -> ``{"pcsw_accept_c", "pcsw_fallback_c", "pcsw_reject_c"}`` for c = 1..K,
    scalar float tensors (0 when the class is predicted nowhere); {} for None. No host sync."""
    if status is None:
        return {}
    predicted = (status > 0).float().sum(0).clamp_min(1.0)                           # (K,)
    out = {}
    for name, code in PCSW_STATUS.items():
        rate = (status == code).float().sum(0) / predicted
        out.update({f"pcsw_{name}_{c + 1}": rate[c] for c in range(k)})
    return out
