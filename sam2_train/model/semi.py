"""Weak-to-strong pieces shared by the 2D and 3D steps: the method's settings, ground-truth prompts, what the
teacher hands the student (CutMix-ed pseudo-labels and prompts), body masks, the unlabeled-loss ramp.
Shapes: N images/frames, K foreground classes, S image size, s = S/4 coarse size.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam2_train.model.cutmix import mix
from sam2_train.model.prompts import jitter_boxes, masks_to_boxes, sample_click
from sam2_train.model.sss_net import SlicePrompts


@dataclass(frozen=True)
class SemiConf:
    """Settings of the training step (``-method`` and its flags).

    ``method``: supervised | fixmatch | sss; the lightweight students also mean_teacher and :data:`SAM_GUIDED`.
    ``lambda_u``/``rampup``: weight of the unlabeled loss, with a sigmoid ramp over ``rampup`` iterations (0 = none). ``tau_u``: pseudo-label confidence threshold.
    ``p_gt``: probability that a labeled image (2D) or clip (3D) is prompted by jittered ground truth rather
    than by the model's own prompts. ``use_pcsw``: the model's own prompts come from PCSW (else coarse
    boxes). ``out_size``: size of the labeled-loss masks. ``slab_len``: 2D unlabeled slab length.
    ``prompt``/``prompt_freq``: 3D ground-truth prompt type and thinning of prompted frames.
    ``tau_fallback``: the stricter pseudo-label threshold of classes prompted by a PCSW fallback.
    ``ce_weights``: CE weight per class 0..K of the coarse head's loss (empty: unweighted).
    SAM-guided methods (lightweight students, :data:`SAM_GUIDED`): ``km_points`` points per class and
    ``km_thresh`` mask threshold of Knowledge Mining's prompts; ``km_start`` the iteration from which Knowledge
    Mining uses SAM-2's labels (labeled data only before, both variants); ``km_agree`` Dice with the student a
    continuous SAM label must reach (0: off; our extra, not the paper's); ``sam_lambda`` SemiSAM's L_sam weight at
    iteration 0, decaying as ``exp(-5 (t/sam_decay)^2)``; ``sam_start`` SAM-Match's joint stage (UniMatch-style
    and, with ``guide_train``, SAM-2 fine-tuned on the labeled slices only before it); ``bbox_shift`` SAM-Match's
    box margin in pixels; ``guide_train``/``guide_lr`` SAM-Match's fine-tuning of SAM-2 (SGD, momentum 0.9,
    weight decay 1e-4, constant rate), loss ``loss_x_sam + guide_u_weight * loss_u_w_sam``."""
    method: str = "sss"
    lambda_u: float = 1.0
    rampup: int = 0
    tau_u: float = 0.95
    p_gt: float = 0.5
    cutmix_p: float = 0.5
    unsup_encoder_grad: bool = False
    use_pcsw: bool = True
    out_size: int = 1024
    slab_len: int = 4
    prompt: str = "bbox"
    prompt_freq: int = 2
    tau_fallback: float = 0.98
    ce_weights: tuple[float, ...] = ()
    km_points: int = 1
    km_thresh: float = 0.5
    km_start: int = 0
    km_agree: float = 0.0
    sam_lambda: float = 0.05
    sam_decay: int = 1
    sam_start: int = 0
    bbox_shift: int = 5
    guide_train: bool = False
    guide_lr: float = 5e-4
    guide_u_weight: float = 0.25

    def ce_class_weight(self, device) -> torch.Tensor | None:
        """The coarse head's CE weight per class (K+1,) on ``device``, None when unweighted."""
        return torch.tensor(self.ce_weights, dtype=torch.float32, device=device) if self.ce_weights else None

    @property
    def semi_supervised(self) -> bool:
        return self.method != "supervised"


SAM_GUIDED = ("km_onetime", "km_continuous", "semisam", "sammatch")
"""Methods whose pseudo-labels come from a frozen SAM-2 prompted by a lightweight student."""
LIGHT_STUDENT_ONLY = ("mean_teacher", *SAM_GUIDED)
"""Methods only the lightweight students (``-student unet | unetpp``) train with."""


@dataclass
class UnlabeledTargets:
    """What the teacher hands the student; rows of the strong views are stacked (view 1 rows, then view 2).

    images (3N,1,S,S): weak, mixed strong 1, mixed strong 2. box_masks (2N,S,S) bool: CutMix region of each
    strong row. partner (2N,): the stacked row pasted into each box. labels (2N,s,s) int64 and conf (2N,s,s)
    float: mixed pseudo-labels and their confidences. prompts (2N,K): mixed prompts, in model-input pixels.
    num_clips: 3D only, the number of strong clips (2*Bu) of N/Bu frames each; 0 for 2D. weak_backbone: the
    teacher's weak-view backbone features (raw FPN levels, 3 of (N,256,...), before conv_s0/conv_s1) when the
    student may reuse them (frozen image encoder); the student applies its own conv_s0/conv_s1 to them."""
    images: torch.Tensor
    box_masks: torch.Tensor
    partner: torch.Tensor
    labels: torch.Tensor
    conf: torch.Tensor
    prompts: SlicePrompts
    num_clips: int = 0
    weak_backbone: list | None = None
    pcsw_status: torch.Tensor | None = None


def body_mask(images: torch.Tensor, s: int, thresh: float = 0.02) -> torch.Tensor:
    """(N,1,S,S) images -> (N,s,s) bool: coarse cells holding any tissue (PCSW keeps prompts inside)."""
    return F.adaptive_max_pool2d(images[:, 0:1].float(), s)[:, 0] > thresh


def one_hot_fg(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N,h,w) int64 in 0..K -> (N,K,h,w) float one-hot of the foreground classes."""
    return F.one_hot(labels, k + 1)[..., 1:].permute(0, 3, 1, 2).float()


def gt_prompts(labels: torch.Tensor, k: int, image_size: int, jitter: float = 0.1) -> SlicePrompts:
    """Jittered ground-truth boxes and one click per present class: labels (N,S,S) -> SlicePrompts (N,K).

    The click is a uniformly drawn pixel of the class, as its (column, row) index in model-input pixels
    (SAM-2's prompt encoder adds the 0.5 that puts it on the pixel centre; see :class:`SlicePrompts`).
    """
    masks = one_hot_fg(labels, k).bool()                                      # (N,K,S,S)
    boxes, valid = masks_to_boxes(masks)
    boxes = jitter_boxes(boxes, valid, jitter, bounds=(image_size, image_size))
    points = sample_click(masks)[0]                                           # pixel indices, xy
    return SlicePrompts(boxes=boxes, points=points, valid=valid)


def choose_prompts(use_a: torch.Tensor, a: SlicePrompts, b: SlicePrompts) -> SlicePrompts:
    """Per row (N,1) bool: prompts ``a`` where True, ``b`` elsewhere (boxes, points, valid)."""
    fa = a.fallback if a.fallback is not None else torch.zeros_like(a.valid)
    fb = b.fallback if b.fallback is not None else torch.zeros_like(b.valid)
    return SlicePrompts(boxes=torch.where(use_a[..., None], a.boxes, b.boxes),
                        points=torch.where(use_a[..., None], a.points, b.points),
                        valid=torch.where(use_a, a.valid, b.valid), fallback=torch.where(use_a, fa, fb))


PCSW_STATUS = {"accept": 1, "fallback": 2, "reject": 3}


def pcsw_rates(status: torch.Tensor | None, k: int) -> dict:
    """Per-class PCSW rates over slabs/clips where the coarse head predicts the class: status (n,K) int64
    (``SlicePrompts.status``) -> ``{"pcsw_accept_c", "pcsw_fallback_c", "pcsw_reject_c"}`` for c = 1..K,
    scalar float tensors (0 when the class is predicted nowhere); {} for None. No host sync."""
    if status is None:
        return {}
    predicted = (status > 0).float().sum(0).clamp_min(1.0)                           # (K,)
    out = {}
    for name, code in PCSW_STATUS.items():
        rate = (status == code).float().sum(0) / predicted
        out.update({f"pcsw_{name}_{c + 1}": rate[c] for c in range(k)})
    return out





def _pixel_of(points: torch.Tensor, size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """points (n,K,2) xy model-input pixel indices -> (column, row) (n,K) long on a ``size`` grid."""
    cell = (points * (size / image_size)).floor().long().clamp(0, size - 1)
    return cell[..., 0], cell[..., 1]


def _on_mask(points: torch.Tensor, masks: torch.Tensor, image_size: int) -> torch.Tensor:
    """points (n,K,2) xy model-input pixel indices, masks (n,K,h,w) bool -> (n,K) bool: the point's cell is set."""
    n, k, h, w = masks.shape
    x, y = _pixel_of(points, w, image_size)
    return masks.flatten(2).gather(2, (y * w + x)[..., None])[..., 0]


def _in_cut(points: torch.Tensor, box_masks: torch.Tensor) -> torch.Tensor:
    """points (n,K,2) xy pixel indices, box_masks (n,S,S) -> (n,K) bool: the point's pixel is pasted."""
    size = box_masks.shape[-1]
    x, y = _pixel_of(points, size, size)
    return box_masks.flatten(1).gather(1, y.flatten(1) * size + x.flatten(1)).view(points.shape[:-1])


def interior_points(masks: torch.Tensor, depth: int = 8) -> torch.Tensor:
    """The most interior cell of each mask: masks (n,K,h,w) bool -> (n,K,2) float xy cell indices.

    Cells are ranked by how many 3x3 erosions (up to ``depth``; outside the map counts as background) they
    survive, ties by distance to the mask's centroid; empty masks give (0, 0).
    """
    m = masks.flatten(0, 1)[:, None].float()                                   # (nK,1,h,w)
    h, w = m.shape[-2:]
    level, cur = m.clone(), m
    for _ in range(depth):                                                     # fixed count: no host sync
        cur = 1.0 - F.max_pool2d(F.pad(1.0 - cur, (1, 1, 1, 1), value=1.0), 3, stride=1)
        level += cur
    yy, xx = torch.meshgrid(torch.arange(h, device=m.device, dtype=m.dtype),
                            torch.arange(w, device=m.device, dtype=m.dtype), indexing="ij")
    area = m.sum((2, 3), keepdim=True).clamp_min(1.0)
    cy, cx = (m * yy).sum((2, 3), keepdim=True) / area, (m * xx).sum((2, 3), keepdim=True) / area
    dist2 = (yy - cy) ** 2 + (xx - cx) ** 2                                    # < h*h + w*w
    score = torch.where(m > 0, level * (h * h + w * w + 1) - dist2, torch.full_like(m, -1.0))
    idx = score.flatten(1).argmax(1)
    pts = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).to(torch.float32)
    pts = torch.where(m.flatten(1).any(1)[:, None], pts, torch.zeros_like(pts))
    return pts.view(*masks.shape[:2], 2)


def mix_prompts(prompts: SlicePrompts, partner: torch.Tensor, box_masks: torch.Tensor, image_size: int,
                margin: int) -> SlicePrompts:
    """Prompts of CutMix-ed images, mixed the way their pixels were.

    The prompted component masks (n,K,s,s) are mixed by the same boxes and re-boxed (plus ``margin``
    coarse pixels). Every click of a class with a mixed component lies on that component (hence inside its
    box): the row's own click if its class was prompted and the click is outside the pasted box, else the
    partner's click if that class was prompted there and the click is inside the pasted box, else the most
    interior cell of the mixed component (:func:`interior_points`) -- e.g. when only a piece of the
    partner's component was pasted, or the class was not prompted in the row (no click, or a thinned 3D
    frame). A class without a mixed component gets the click (0, 0) (it is not prompted).
    """
    s = prompts.masks.shape[-1]
    masks = mix(prompts.masks, partner, box_masks)
    boxes, valid = masks_to_boxes(masks)
    pad = boxes.new_tensor([-margin, -margin, margin, margin])
    boxes = (boxes + pad).clamp(0, s) * (image_size / s)
    own, other = prompts.points, prompts.points[partner]
    own_ok = prompts.valid & ~_in_cut(own, box_masks) & _on_mask(own, masks, image_size)
    other_ok = prompts.valid[partner] & _in_cut(other, box_masks) & _on_mask(other, masks, image_size)
    inner = (interior_points(masks) + 0.5) * (image_size / s) - 0.5           # cell centre, pixel indices
    points = torch.where(own_ok[..., None], own, torch.where(other_ok[..., None], other, inner))
    points = torch.where(valid[..., None], points, torch.zeros_like(points))
    return SlicePrompts(boxes=boxes, points=points, valid=valid, masks=masks)


def mix_strong_views(xw: torch.Tensor, xs1: torch.Tensor, xs2: torch.Tensor, labels: torch.Tensor,
                     conf: torch.Tensor, prompts: SlicePrompts, partner: torch.Tensor, box_masks: torch.Tensor,
                     margin: int, num_clips: int = 0, weak_backbone: list | None = None) -> UnlabeledTargets:
    """The teacher's weak-view targets carried to both CutMix-ed strong views (rows: view 1 then view 2).

    xw, xs1, xs2 (N,1,S,S); labels, conf (N,s,s); prompts (N,K); partner (2N,) rows of the stacked strong
    views (a row of the same view); box_masks (2N,S,S); num_clips: 3D strong clips (0 in 2D); weak_backbone: handed
    on to the student (see :class:`UnlabeledTargets`). Images,
    pseudo-labels, confidences and prompts are all mixed by the same boxes.
    """
    rep = lambda t: torch.cat([t, t])                                                             # noqa: E731
    return UnlabeledTargets(
        images=torch.cat([xw, mix(torch.cat([xs1, xs2]), partner, box_masks)]), box_masks=box_masks, partner=partner,
        labels=mix(rep(labels), partner, box_masks), conf=mix(rep(conf), partner, box_masks),
        prompts=mix_prompts(SlicePrompts(rep(prompts.boxes), rep(prompts.points), rep(prompts.valid), rep(prompts.masks)),
                            partner, box_masks, xw.shape[-1], margin),
        num_clips=num_clips, weak_backbone=weak_backbone)


def rampup_weight(conf: SemiConf, iteration: int) -> float:
    """The sigmoid ramp-up of Laine & Aila at ``iteration``: exp(-5 (1 - t)^2), t = iteration / ``conf.rampup``
    (1 without a ramp)."""
    if conf.rampup <= 0:
        return 1.0
    t = min(iteration, conf.rampup) / conf.rampup
    return math.exp(-5.0 * (1.0 - t) ** 2)


def sam_weight(conf: SemiConf, iteration: int) -> float:
    """SemiSAM's L_sam weight at ``iteration``: ``conf.sam_lambda * exp(-5 (t / sam_decay)^2)``, the decreasing
    mirror of the sigmoid ramp-up (SemiSAM's code: ``sigmoid_rampup(max_iterations - iter_num, ...)``, "Decrease
    during training"): the student leans on SAM-2 early and on its own mean teacher later."""
    t = min(iteration, conf.sam_decay) / max(1, conf.sam_decay)
    return conf.sam_lambda * math.exp(-5.0 * t * t)


def lambda_u(conf: SemiConf, iteration: int) -> float:
    """Unlabeled-loss weight at ``iteration``: ``conf.lambda_u`` times :func:`rampup_weight`."""
    return conf.lambda_u * rampup_weight(conf, iteration)


def thin_prompt_frames(valid: torch.Tensor, freq: int) -> torch.Tensor:
    """Keep every ``freq``-th prompted frame of each class in each clip/volume: valid (B,T,K) -> (B,T,K) bool.

    The frames on which a class has a prompt are ranked along T (0, 1, 2, ...) per clip and class, and those
    of rank 0, freq, 2 freq, ... keep the prompt: every prompted class keeps its first prompted frame, and
    SAM-2 memory (which conditions each class on its own prompted frames) carries it through the others.
    ``freq = 1`` returns ``valid`` unchanged.
    """
    if freq <= 1:
        return valid
    rank = valid.long().cumsum(-2) - 1                                      # (B,T,K)
    return valid & (rank % freq == 0)



def strong_view_features(net, images: torch.Tensor, partner: torch.Tensor, box_masks: torch.Tensor,
                         encoder_grad: bool, weak_backbone: list[torch.Tensor] | None = None):
    """Student features of the unlabeled views: images (3N,1,S,S) = weak, mixed strong 1, mixed strong 2.

    The encoder runs without autograd unless ``encoder_grad``; the weak features are CutMix-ed like the
    strong images (``partner`` (2N,), ``box_masks`` (2N,S,S)) so DFE(W, S1), DFE(W, S2) pair aligned pixels.
    ``weak_backbone`` (3 levels of (N,256,...)): the weak view's raw backbone (Hiera + FPN) features, already
    computed by the teacher; valid only when the image encoder is frozen, so that they are the student's too.
    Only the 2N strong images are then encoded, and the student's own conv_s0/conv_s1 (decoder parameters,
    which train) project the weak levels 0 and 1, so W and S come from the same network.
    Returns (ImageFeatures of all 3N images, DFE-enhanced strong features: 3 levels of (2N,...)).
    """
    n = images.shape[0] // 3
    with contextlib.nullcontext() if encoder_grad else torch.no_grad():
        if weak_backbone is None:
            enc = net.encode(images)
        else:
            enc_s = net.encode(images[n:])
            enc_w = net.project(enc_s.replace([w.to(s.dtype) for w, s in zip(weak_backbone, enc_s.feats)]))
            enc = enc_s.replace([torch.cat([w, s]) for w, s in zip(enc_w.feats, enc_s.feats)])
    fw = [mix(torch.cat([f[:n], f[:n]]), partner, box_masks) for f in enc.feats]
    _, fs = net.enhance(fw, [f[n:] for f in enc.feats])
    return enc, fs


def student_strong_views(net, u: UnlabeledTargets, semi: SemiConf):
    """The student's side of the weak-to-strong loss, shared by the 2D and 3D steps: DFE-enhanced features of
    the 2N strong rows (:func:`strong_view_features`, as ImageFeatures carrying the encoder's positional
    encodings, which the 3D tracker needs) and the pseudo-label mask ``conf_ok`` (2N,s,s) = conf >= tau_u."""
    enc, feats_s = strong_view_features(net, u.images, u.partner, u.box_masks, semi.unsup_encoder_grad,
                                        u.weak_backbone)
    return enc.replace(feats_s), u.conf >= semi.tau_u


def step_outputs(loss: torch.Tensor, loss_x: torch.Tensor, loss_u: torch.Tensor, conf_ok: torch.Tensor,
                 u: UnlabeledTargets, k: int) -> dict:
    """What a semi-supervised step returns for logging: the losses, the share of confident pseudo-label pixels
    (``mask_ratio``) and the PCSW rates per class (:func:`pcsw_rates`); all tensors, no host sync."""
    return {"loss": loss, "loss_x": loss_x, "loss_u": loss_u, "mask_ratio": conf_ok.float().mean().detach(),
            **pcsw_rates(u.pcsw_status, k)}

