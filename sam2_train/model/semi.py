"""Weak-to-strong pieces shared by the 2D and 3D steps: ground-truth prompts, CutMix of pseudo-labels and
prompts, body masks, the unlabeled-loss ramp. Shapes: N images/frames, K foreground classes, S image size,
s = S/4 coarse size.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from sam2_train.model.cutmix import mix
from sam2_train.model.prompts import jitter_boxes, masks_to_boxes, sample_click
from sam2_train.model.sss_net import SlicePrompts


def body_mask(images: torch.Tensor, s: int, thresh: float = 0.02) -> torch.Tensor:
    """(N,1,S,S) images -> (N,s,s) bool: coarse cells holding any tissue (PCSW keeps prompts inside)."""
    return F.adaptive_max_pool2d(images[:, 0:1].float(), s)[:, 0] > thresh


def one_hot_fg(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N,h,w) int64 in 0..K -> (N,K,h,w) float one-hot of the foreground classes."""
    return F.one_hot(labels, k + 1)[..., 1:].permute(0, 3, 1, 2).float()


def gt_prompts(labels: torch.Tensor, k: int, image_size: int, jitter: float = 0.1) -> SlicePrompts:
    """Jittered ground-truth boxes and one click per present class: labels (N,S,S) -> SlicePrompts (N,K)."""
    masks = one_hot_fg(labels, k).bool()                                      # (N,K,S,S)
    boxes, valid = masks_to_boxes(masks)
    boxes = jitter_boxes(boxes, valid, jitter, bounds=(image_size, image_size))
    points = sample_click(masks)[0] + 0.5                                     # pixel centres, xy
    return SlicePrompts(boxes=boxes, points=points, valid=valid)


def choose_prompts(use_a: torch.Tensor, a: SlicePrompts, b: SlicePrompts) -> SlicePrompts:
    """Per row (N,1) bool: prompts ``a`` where True, ``b`` elsewhere (boxes, points, valid)."""
    return SlicePrompts(boxes=torch.where(use_a[..., None], a.boxes, b.boxes),
                        points=torch.where(use_a[..., None], a.points, b.points),
                        valid=torch.where(use_a, a.valid, b.valid))





def _inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """points (n,K,2), boxes (n,4) -> (n,K) bool: point inside the box."""
    b = boxes[:, None]
    return ((points[..., 0] >= b[..., 0]) & (points[..., 0] < b[..., 2])
            & (points[..., 1] >= b[..., 1]) & (points[..., 1] < b[..., 3]))


def mix_prompts(prompts: SlicePrompts, partner: torch.Tensor, box_masks: torch.Tensor, image_size: int,
                margin: int) -> SlicePrompts:
    """Prompts of CutMix-ed images, mixed the way their pixels were.

    The prompted component masks (n,K,s,s) are mixed by the same boxes and re-boxed (plus ``margin``
    coarse pixels); a click stays if it lies outside the pasted box, else the partner's click is taken if
    it lies inside the box, else the centre of the mixed box.
    """
    s = prompts.masks.shape[-1]
    masks = mix(prompts.masks, partner, box_masks)
    boxes, valid = masks_to_boxes(masks)
    pad = boxes.new_tensor([-margin, -margin, margin, margin])
    boxes = (boxes + pad).clamp(0, s) * (image_size / s)
    cut = masks_to_boxes(box_masks[:, None])[0][:, 0]                         # (n,4) pasted region, image px
    own, other = prompts.points, prompts.points[partner]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    points = torch.where(~_inside(own, cut)[..., None], own,
                         torch.where(_inside(other, cut)[..., None], other, centre))
    return SlicePrompts(boxes=boxes, points=points, valid=valid, masks=masks)


def mix_strong_views(xw: torch.Tensor, xs1: torch.Tensor, xs2: torch.Tensor, labels: torch.Tensor,
                     conf: torch.Tensor, prompts: SlicePrompts, partner: torch.Tensor, box_masks: torch.Tensor,
                     margin: int) -> dict:
    """The teacher's weak-view targets carried to both CutMix-ed strong views (rows: view 1 then view 2).

    xw, xs1, xs2 (N,1,S,S); labels, conf (N,s,s); prompts (N,K); partner (2N,) rows of the stacked strong
    views (a row of the same view); box_masks (2N,S,S). Returns the fields ``images`` (3N: weak, mixed
    strong 1, mixed strong 2), ``box_masks``, ``partner``, ``labels``, ``conf``, ``prompts`` (2N), all mixed
    by the same boxes.
    """
    rep = lambda t: torch.cat([t, t])                                                             # noqa: E731
    return dict(images=torch.cat([xw, mix(torch.cat([xs1, xs2]), partner, box_masks)]), box_masks=box_masks,
                partner=partner, labels=mix(rep(labels), partner, box_masks), conf=mix(rep(conf), partner, box_masks),
                prompts=mix_prompts(SlicePrompts(rep(prompts.boxes), rep(prompts.points), rep(prompts.valid),
                                                 rep(prompts.masks)), partner, box_masks, xw.shape[-1], margin))


def lambda_u(args, iteration: int) -> float:
    """Unlabeled-loss weight with optional sigmoid ramp-up (Laine & Aila) over ``-rampup`` iterations."""
    if args.rampup <= 0:
        return args.lambda_u
    t = min(iteration, args.rampup) / args.rampup
    return args.lambda_u * math.exp(-5.0 * (1.0 - t) ** 2)


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
                         encoder_grad: bool, weak_feats: list[torch.Tensor] | None = None):
    """Student features of the unlabeled views: images (3N,1,S,S) = weak, mixed strong 1, mixed strong 2.

    The encoder runs without autograd unless ``encoder_grad``; the weak features are CutMix-ed like the
    strong images (``partner`` (2N,), ``box_masks`` (2N,S,S)) so DFE(W, S1), DFE(W, S2) pair aligned pixels.
    ``weak_feats`` (3 levels of (N,...)): the weak view's encoder features already computed by the teacher
    (valid only when the encoder is frozen, :func:`sam2_train.model.levers.encoder_frozen`); only the 2N strong
    images are then encoded.
    Returns (ImageFeatures of all 3N images, DFE-enhanced strong features: 3 levels of (2N,...)).
    """
    n = images.shape[0] // 3
    with contextlib.nullcontext() if encoder_grad else torch.no_grad():
        if weak_feats is None:
            enc = net.encode(images)
        else:
            enc_s = net.encode(images[n:])
            enc = enc_s.replace([torch.cat([w.to(s.dtype), s]) for w, s in zip(weak_feats, enc_s.feats)])
    fw = [mix(torch.cat([f[:n], f[:n]]), partner, box_masks) for f in enc.feats]
    _, fs = net.enhance(fw, [f[n:] for f in enc.feats])
    return enc, fs


def total_loss(out: dict, args, iteration: int) -> dict:
    """Adds ``out["loss"] = loss_x + lambda_u(iteration) * loss_u`` (loss_x alone without unlabeled data)."""
    out["loss"] = out["loss_x"] + (lambda_u(args, iteration) * out["loss_u"] if "loss_u" in out else 0.0)
    return out


def run_step(make_targets, student, teacher, batch_l: dict, batch_u: dict | None, args, iteration: int,
             autocast) -> dict:
    """Forward of one iteration (2D or 3D): teacher targets for the unlabeled batch (``make_targets(teacher,
    batch_u, args)``, skipped for ``-method supervised``), then the student; returns {"loss", ...terms}.
    The caller steps the optimiser."""
    with autocast():
        targets = None
        if batch_u is not None and args.method != "supervised":
            targets = make_targets(teacher, batch_u, args)
        out = student(batch_l["image"], batch_l["label"], targets)
    return total_loss(out, args, iteration)
