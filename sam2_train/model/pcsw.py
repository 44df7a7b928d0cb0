"""PCSW prompt generator: Physical Constraints + Sliding Window.

From the coarse head's class probabilities over the slices of one volume or slab, PCSW finds, per
foreground class, a structure that is continuous across neighbouring slices and turns it into one box
and one point prompt per slice. Everything is in *coarse-map pixel units* (the head's ``h x w`` grid);
:func:`image_prompts` converts to model-input pixels (:meth:`Prompts.scaled`).

Algorithm (per slab ``n`` and class ``k`` = one "group"; all groups are processed together):

1. **Binarise**: voxel ``v`` is foreground of class ``k`` iff ``k`` is the argmax class at ``v`` AND
   ``p_k(v) >= thresh``. (Taking the argmax makes the classes disjoint, as the final label map is; the
   threshold removes the low-margin argmax voxels of a near-uniform softmax.)
2. **3-D components**, 26-connectivity (``scipy.ndimage.label``). All groups are labeled in ONE call: the
   binary masks are stacked as a 4-D array ``(N*K, D, h, w)`` and labeled with a ``3x3x3x3`` structuring
   element whose only non-zero block is the centre one along the group axis, so no component crosses
   groups.
3. **Physical constraints**: a component is kept iff
   - the slices it occupies are consecutive (no gap; always true for a 26-connected 3-D component, checked),
   - it has ``>= min_voxels`` voxels,
   - on every slice it occupies, its area lies in ``[min_area, max_area] * h * w``,
   - its mean probability ``p_k`` is ``>= tau_conf``,
   - (if a body mask is given) at least ``body_frac`` (default 0.5) of its voxels are inside the body.
   The kept components form the *constrained foreground* of the group.
4. **Sliding windows**: every window ``[s, s+N)`` with ``N_min <= N <= N_max`` (``N_max = 0`` means ``D``;
   if ``D < N_min`` the only length is ``N = D``) is scored by continuity
   ``C = |largest kept component inside the window| / |constrained foreground inside the window|``
   (0 for an empty window). Counts come from cumulative sums over slices of per-component per-slice
   voxel counts, so all windows x components x groups are scored with array operations.
   A window is *eligible* only if its largest component is present on every slice of the window (the
   cross-slice continuity constraint: without it a window whose only content sits on one slice would
   score ``C = 1``, and a structure that flickers on alternate slices would be accepted).
   The accepted window (``select``, flag ``-pcsw_select``): ``longest`` (default) takes the longest
   eligible window with ``C >= tau``, ties to the highest ``C``: the widest run of slices that is still
   continuous, so the most slices get a prompt (2D inference has no memory to carry masks to unprompted
   slices); ``continuity`` takes the eligible window with the highest ``C``, ties to the longest, and
   accepts it iff ``C >= tau``. Remaining ties go to the window whose largest component has the most
   voxels inside it, then to the earliest.
   **Multifocal** (``multifocal``, flag ``-pcsw_multifocal``; default on in 3D): before step 4 all kept
   components of a group are merged into one structure, so every kept lesion of a class is prompted and
   ``C = 1`` on every window the union covers slice by slice (diffuse, scattered SAH is not rejected by
   continuity; the every-slice eligibility rule still applies).
5. **Prompts**: for every slice of the accepted window on which the window's largest component is
   present: the component's tight box on that slice grown by ``margin`` pixels and clipped to the map,
   and its most confident pixel (argmax of ``p_k`` inside the component on that slice).
6. **Fallback** (``fallback``, flag ``-pcsw_fallback``, default on): a group without an accepted window
   but with binarised foreground (step 1) inside the body (``body_frac``) is prompted, on every slice it
   occupies, by its 3-D component with the largest confidence mass (sum of ``p_k``; ties to the lowest
   label; with ``multifocal``, the merged structure that component belongs to). Its prompts are flagged in
   ``Prompts.fallback`` (the teacher holds them to ``-tau_fallback``). Without fallback, such a group gets no
   prompt (``valid`` False everywhere). ``Prompts.status`` reports accepted / fallback / rejected per group.

Calibration: with ``class_conf`` (:meth:`SSSNet.gates`, ``-pcsw_calibrate``), class ``k`` uses
``min(thresh, class_conf[k])`` in step 1 and ``min(tau_conf, class_conf[k])`` in step 3.

Conventions of :class:`~sam2_train.model.prompts.Prompts`: boxes are ``x1, y1, x2, y2`` floats with ``x2, y2``
exclusive (a single pixel at column 3, row 5 with margin 0 is ``(3, 5, 4, 6)``), so multiplying by ``S / w``
gives image pixels; points ``(..., K, 1, 2)`` are pixel indices ``(x, y)`` (the encoder adds 0.5); invalid
entries are 0. PCSW fills the optional ``masks`` (the prompted component), ``windows`` (the accepted window
``[start, end)`` per class, ``(-1, -1)`` if none), ``scores`` (continuity of the best eligible window),
``fallback`` and ``status`` (per class: 0 not predicted, 1 accepted, 2 fallback, 3 rejected).

Device: the thresholding runs on the input's device; the masked class probabilities (and the body mask)
are then copied to the host ONCE (one ``.cpu()`` of one packed tensor), the labeling and all statistics run
in numpy/scipy, and the results are copied back to the input's device.

Speed (CPU, 2 threads, smooth random probabilities with ~22% foreground, ``(N, D, K+1) = (8, 4, 4)``):
about 10 ms at ``h = w = 64`` and 110 ms at 256 (``coarse_box_prompts``: 2 ms and 24 ms); roughly twice
that on a loaded machine. The 3-D labeling is about half of the time at 256.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.profiler import record_function

from sam2_train.engine.settings import nonneg_int, positive_int, setting, str2bool, unit_float
from sam2_train.model.prompts import Prompts

__all__ = ["PCSWConfig", "pcsw_prompts", "coarse_box_prompts", "image_prompts"]

# 4-D structuring element: 26-connectivity inside a (D, h, w) block, no connection along the group axis.
_STRUCT4 = np.zeros((3, 3, 3, 3), dtype=bool)
_STRUCT4[1] = True


@dataclass(frozen=True)
class PCSWConfig:
    """PCSW settings (flags ``-pcsw_*``); areas are fractions of ``h * w``."""
    thresh: float = setting(0.5, flag="-pcsw_thresh", type=unit_float, group="PCSW",
                            help="binarisation threshold on class probability")
    tau: float = setting(0.8, flag="-pcsw_tau", type=unit_float, group="PCSW", help="continuity threshold C >= tau")
    tau_conf: float = setting(0.6, flag="-pcsw_tau_conf", type=unit_float, group="PCSW",
                              help="minimum mean confidence of a component")
    min_len: int = setting(2, flag="-pcsw_min_len", type=positive_int, preset=True, group="PCSW",
                           help="shortest window N_min (slices); default 2 in 2D, 1 in 3D (single-slice lesions)")
    max_len: int = setting(0, flag="-pcsw_max_len", type=nonneg_int, group="PCSW",
                           help="longest window N_max (0 = whole slab)")
    min_voxels: int = setting(4, flag="-pcsw_min_voxels", type=nonneg_int, group="PCSW",
                              help="smallest component, in coarse-map voxels")
    min_area: float = setting(0.0, flag="-pcsw_min_area", type=unit_float, group="PCSW",
                              help="smallest per-slice area, fraction of the slice")
    max_area: float = setting(0.5, flag="-pcsw_max_area", type=unit_float, group="PCSW",
                              help="largest per-slice area, fraction of the slice")
    margin: int = setting(2, flag="-pcsw_margin", type=nonneg_int, group="PCSW", help="box margin in coarse-map pixels")
    body_frac: float = setting(0.5)
    select: str = setting("longest", flag="-pcsw_select", choices=("longest", "continuity"), group="PCSW",
                          help="accepted window: the longest with C >= tau, or the one with the highest C")
    fallback: bool = setting(True, flag="-pcsw_fallback", type=str2bool, group="PCSW", metavar="{0,1}",
                             help="a class PCSW rejects but the coarse head predicts is prompted by its 3-D component "
                                  "with the largest confidence mass, flagged as fallback (stricter pseudo-labels, "
                                  "-tau_fallback)")
    calibrate: bool = setting(True, flag="-pcsw_calibrate", type=str2bool, group="PCSW", metavar="{0,1}",
                              help="per-class gates min(-pcsw_thresh|-pcsw_tau_conf, c_k), c_k = EMA of the class's "
                                   "mean coarse probability on its labeled ground-truth pixels")
    fuse: bool = setting(True, flag="-pcsw_fuse", type=str2bool, group="PCSW", metavar="{0,1}",
                         help="label maps (inference boxes/pcsw) and the teacher's pseudo-labels are the argmax of the "
                              "coarse head and SAM-2 averaged on prompted classes (0: SAM-2's masks alone, the "
                              "paper's rule)")
    multifocal: bool = setting(False, flag="-pcsw_multifocal", type=str2bool, preset=True, group="PCSW",
                               metavar="{0,1}",
                               help="prompt every kept component of a class (merged), not only the largest; default "
                                    "0 in 2D, 1 in 3D (multifocal, diffuse lesions)")

    def window_lengths(self, depth: int) -> tuple[int, int]:
        """``(N_min, N_max)`` actually used for a slab of ``depth`` slices."""
        n_min = min(max(1, self.min_len), depth)
        n_max = depth if self.max_len <= 0 else min(self.max_len, depth)
        return n_min, max(n_min, n_max)


def _argmax_masks(pc: torch.Tensor) -> torch.Tensor:
    """``pc (N, C, ...)`` class-major probabilities -> ``(N, C-1, ...)`` bool: class ``k >= 1`` is the
    argmax over the ``C`` classes (first index on ties, as ``torch.argmax``). Uses running maxima over the
    few classes because ``argmax`` over a non-innermost axis is very slow on CPU."""
    C = pc.shape[1]
    pre = [pc[:, 0]]                                     # pre[k] = max_{j <= k} p_j
    for c in range(1, C - 1):
        pre.append(torch.maximum(pre[-1], pc[:, c]))
    out = [None] * (C - 1)
    suf = None                                           # max_{j > k} p_j
    for k in range(C - 1, 0, -1):
        m = pc[:, k] > pre[k - 1]
        if suf is not None:
            m &= pc[:, k] >= suf
            suf = torch.maximum(suf, pc[:, k])
        else:
            suf = pc[:, k]
        out[k - 1] = m
    return torch.stack(out, 1)


def _as_batch(probs: torch.Tensor, body_mask: torch.Tensor | None):
    if probs.dim() == 4:
        return probs[None], (None if body_mask is None else body_mask[None]), False
    if probs.dim() == 5:
        return probs, body_mask, True
    raise ValueError(f"probs must be (D, K+1, h, w) or (N, D, K+1, h, w), got {tuple(probs.shape)}")


def _unbatch(p: Prompts, batched: bool) -> Prompts:
    if batched:
        return p
    return p.map_tensors(lambda t: t[0])


@torch.no_grad()
def pcsw_prompts(probs: torch.Tensor, body_mask: torch.Tensor | None = None,
                 cfg: PCSWConfig | None = None, class_conf: torch.Tensor | None = None) -> Prompts:
    """PCSW prompts from class probabilities.

    Args:
        probs: ``(D, K+1, h, w)`` softmax probabilities of one volume/slab (slice axis first, class 0 =
            background), or ``(N, D, K+1, h, w)`` for ``N`` slabs at once (same result as ``N`` calls).
        body_mask: optional ``(D, h, w)`` / ``(N, D, h, w)`` bool, True inside the body.
        cfg: :class:`PCSWConfig` (defaults if None).
        class_conf: optional ``(K,)`` calibrated confidence per class (negative = not calibrated yet); the
            binarisation threshold and the component confidence gate of class ``k`` become
            ``min(cfg.thresh, class_conf[k])`` and ``min(cfg.tau_conf, class_conf[k])``.
    Returns:
        :class:`Prompts` on ``probs.device``; shapes ``(D, K, ...)`` or ``(N, D, K, ...)``.
    """
    cfg = cfg or PCSWConfig()
    probs, body_mask, batched = _as_batch(probs, body_mask)
    N, D, C, h, w = probs.shape
    K = C - 1
    if K < 1:
        raise ValueError("probs needs at least one foreground class (K+1 >= 2 channels)")
    if body_mask is not None and tuple(body_mask.shape) != (N, D, h, w):
        raise ValueError(f"body_mask must be {(N, D, h, w)[0 if batched else 1:]}, got {tuple(body_mask.shape)}")
    device = probs.device
    G, hw = N * K, h * w
    V = D * hw

    # --- on the input's device: binarise, keep p_k on the foreground (strictly > 0 there), pack, copy once
    pc = probs.detach().float().transpose(1, 2).contiguous()     # (N, K+1, D, h, w)
    pk = pc[:, 1:]                                                # (N, K, D, h, w)
    thresh_k, tau_conf_k = _class_gates(cfg, class_conf, K, device)                # (K,), (K,)
    fg_t = _argmax_masks(pc) & (pk >= thresh_k[None, :, None, None, None])
    predicted = fg_t.flatten(2).any(2).reshape(-1)                                # (G,) on device
    if cfg.thresh <= 0:  # keep p_k > 0 on the foreground so that "p_k > 0" recovers the mask on the host
        pk = pk.clamp_min(1e-30)
    packed = pk.masked_fill(~fg_t, 0.0).reshape(-1)
    if body_mask is not None:
        packed = torch.cat([packed, body_mask.reshape(-1).to(packed.dtype)])
    packed = torch.cat([packed, tau_conf_k])
    host = packed.cpu().numpy()                                   # the one device -> host copy
    tau_conf_np = host[-K:].astype(np.float64)
    pkf = host[:G * V].reshape(G, D, h, w)
    fg = pkf > 0

    # --- 3-D components of all groups in one call
    lab, n = ndimage.label(fg, structure=_STRUCT4)
    n_min, n_max = cfg.window_lengths(D)
    wl = np.concatenate([np.full(D - L + 1, L) for L in range(n_min, n_max + 1)])
    ws = np.concatenate([np.arange(D - L + 1) for L in range(n_min, n_max + 1)])
    we = ws + wl

    acc_label = np.zeros(G, dtype=np.int64)
    remap = np.arange(n + 1)                                      # label -> prompted label (multifocal merge)
    best_s = np.full(G, -1, dtype=np.int64)
    best_e = np.full(G, -1, dtype=np.int64)
    score = np.zeros(G, dtype=np.float32)
    if n > 0:
        flat = np.flatnonzero(fg)
        lab_f = lab.ravel()[flat].astype(np.int64)
        d_f = (flat // hw) % D
        g_f = flat // V
        cnt = np.bincount(lab_f * D + d_f, minlength=(n + 1) * D).reshape(n + 1, D)   # per component, per slice
        vox = cnt.sum(1)
        conf = np.bincount(lab_f, weights=pkf.ravel()[flat], minlength=n + 1)
        comp_g = np.zeros(n + 1, dtype=np.int64)
        comp_g[lab_f] = g_f
        present = cnt > 0
        first = present.argmax(1)
        last = D - 1 - present[:, ::-1].argmax(1)
        contiguous = present.sum(1) == last - first + 1
        area_ok = np.all(~present | ((cnt >= cfg.min_area * hw) & (cnt <= cfg.max_area * hw)), axis=1)
        in_body = np.ones(n + 1, dtype=bool)
        if body_mask is not None:
            body = host[G * V:-K] > 0.5                              # (N, D, h, w) flattened
            inside = np.bincount(lab_f, weights=body[(g_f // K) * V + flat % V], minlength=n + 1)
            in_body = inside >= cfg.body_frac * vox
        keep = (contiguous & area_ok & (vox >= cfg.min_voxels) & (conf >= tau_conf_np[comp_g % K] * vox)
                & in_body)
        keep[0] = False
        kl = np.flatnonzero(keep)                                  # kept labels, ascending => grouped by g
        if cfg.multifocal and kl.size:                             # all kept components of a group as one
            remap, cnt, kl = _merge_kept(kl, comp_g, cnt)
            present = cnt > 0
            first = present.argmax(1)
            last = D - 1 - present[:, ::-1].argmax(1)
        if kl.size:
            m = kl.size
            cs = np.zeros((2, m, D + 1), dtype=np.int64)
            np.cumsum(cnt[kl], axis=1, out=cs[0, :, 1:])
            np.cumsum(present[kl], axis=1, out=cs[1, :, 1:])
            wc = cs[:, :, we] - cs[:, :, ws]                       # (2, m, windows): voxels, slices in window
            gk = comp_g[kl]
            gstart = np.searchsorted(gk, gk, side="left")
            pos = np.arange(m) - gstart
            dense = np.zeros((2, G, int(pos.max()) + 1, wl.size), dtype=np.int64)
            dense[:, gk, pos] = wc
            tot = dense[0].sum(1)                                  # (G, windows) constrained foreground
            big = dense[0].max(1)                                  # largest component in the window
            which = dense[0].argmax(1)
            cover = np.take_along_axis(dense[1], which[:, None], 1)[:, 0]  # its slices in the window
            cont = np.where(tot > 0, big / np.maximum(tot, 1), 0.0)
            cont[cover < wl[None]] = -1.0                          # not eligible: gaps in the window
            cmax = cont.max(1)
            if cfg.select == "longest":                            # longest window with C >= tau, then highest C
                cand = cont >= cfg.tau
                lens = np.where(cand, wl[None], -1)
                cand &= lens == lens.max(1, keepdims=True)
                cand &= cont >= np.where(cand, cont, -2.0).max(1, keepdims=True)
            else:                                                  # highest C, then the longest window
                cand = cont >= cmax[:, None]
                lens = np.where(cand, wl[None], -1)
                cand &= lens == lens.max(1, keepdims=True)
            best = np.where(cand, big, -1).argmax(1)               # most voxels, then the earliest window
            ar = np.arange(G)
            gfirst = np.zeros(G, dtype=np.int64)
            gfirst[gk] = gstart
            ok = (cmax >= cfg.tau) & cand[ar, best] & (tot[ar, best] > 0)
            score = np.maximum(cmax, 0).astype(np.float32)
            acc_label = np.where(ok, kl[np.minimum(gfirst + which[ar, best], m - 1)], 0)
            best_s = np.where(ok, ws[best], -1)
            best_e = np.where(ok, we[best], -1)
        if cfg.fallback:
            fb_label = remap[_fallback_components(comp_g, conf, in_body, G)]
            fb = (acc_label == 0) & (fb_label > 0)
            acc_label = np.where(fb, fb_label, acc_label)
            best_s = np.where(fb, first[fb_label], best_s)
            best_e = np.where(fb, last[fb_label] + 1, best_e)

    # --- prompts from the accepted component of each group, slice by slice
    dd = np.arange(D)
    in_win = (dd[None] >= best_s[:, None]) & (dd[None] < best_e[:, None])         # (G, D)
    mask = np.zeros((G, D, h, w), dtype=bool)                                       # (G, D, h, w)
    boxes = np.zeros((G, D, 4), dtype=np.float32)
    points = np.zeros((G, D, 2), dtype=np.float32)
    valid = np.zeros((G, D), dtype=bool)
    sel = np.flatnonzero(acc_label)
    if sel.size:
        mask[sel] = (remap[lab[sel]] == acc_label[sel, None, None, None]) & in_win[sel, :, None, None]
        boxes[sel], points[sel], valid[sel] = _boxes_points_np(mask[sel], pkf[sel], cfg.margin)

    def back(a, *tail):  # (G, D, ...) -> (N, D, K, ...) torch on device
        t = torch.from_numpy(np.ascontiguousarray(a)).view(N, K, D, *tail).transpose(1, 2)
        return t.to(device, non_blocking=True)

    fb_np = fb if (cfg.fallback and n > 0) else np.zeros(G, dtype=bool)
    fb_g = torch.from_numpy(fb_np).to(device)
    acc_g = torch.from_numpy(acc_label > 0).to(device)
    status = torch.where(~predicted, 0, torch.where(fb_g, 2, torch.where(acc_g, 1, 3))).view(N, K)
    out = Prompts.single_point(back(boxes, 4), back(points, 2), back(valid), masks=back(mask, h, w),
                               windows=torch.from_numpy(np.stack([best_s, best_e], -1).reshape(N, K, 2)).to(device),
                               scores=torch.from_numpy(score.reshape(N, K)).to(device),
                               fallback=back(valid & fb_np[:, None]), status=status)
    return _unbatch(out, batched)


def _class_gates(cfg: PCSWConfig, class_conf: torch.Tensor | None, k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class binarisation threshold and component confidence gate, ``(K,)`` float32 each: the fixed
    ``cfg.thresh`` / ``cfg.tau_conf``, lowered to ``class_conf[k]`` where that is calibrated (``>= 0``)."""
    thresh = torch.full((k,), float(cfg.thresh), device=device)
    tau_conf = torch.full((k,), float(cfg.tau_conf), device=device)
    if class_conf is None:
        return thresh, tau_conf
    c = class_conf.detach().float().to(device)
    c = torch.where(c >= 0, c.clamp_min(1e-6), torch.ones_like(c))
    return torch.minimum(thresh, c), torch.minimum(tau_conf, c)


def _merge_kept(kl: np.ndarray, comp_g: np.ndarray, cnt: np.ndarray):
    """Multifocal PCSW: the kept components of each group become one, labeled by the group's first kept label.

    kl (m,) kept labels ascending (so grouped by group), comp_g (n+1,) group of each label, cnt (n+1, D) voxels
    per label and slice -> (remap (n+1,) label -> merged label, cnt with each group's counts summed on its
    first kept label and zero on the other kept labels, the merged kept labels)."""
    g = comp_g[kl]
    rep = kl[np.searchsorted(g, g, side="left")]
    remap = np.arange(cnt.shape[0])
    remap[kl] = rep
    merged = cnt.copy()
    merged[kl] = 0
    np.add.at(merged, rep, cnt[kl])
    return remap, merged, np.unique(rep)


def _fallback_components(comp_g: np.ndarray, conf: np.ndarray, eligible: np.ndarray, groups: int) -> np.ndarray:
    """Per group, the label of its eligible 3-D component with the largest confidence mass (sum of ``p_k``),
    ties to the lowest label; 0 for a group without one. comp_g/conf/eligible: ``(n+1,)`` per label."""
    lab = np.flatnonzero(eligible)
    lab = lab[lab > 0]
    out = np.zeros(groups, dtype=np.int64)
    if lab.size:
        order = np.lexsort((lab, -conf[lab], comp_g[lab]))        # by group, then mass desc, then label
        lab = lab[order]
        g = comp_g[lab]
        head = np.ones(lab.size, dtype=bool)
        head[1:] = g[1:] != g[:-1]
        out[g[head]] = lab[head]
    return out


def _boxes_points_np(mask: np.ndarray, prob: np.ndarray, margin: int):
    """``mask``/``prob`` ``(G, D, h, w)`` -> boxes ``(G, D, 4)``, points ``(G, D, 2)`` float32, valid ``(G, D)``."""
    h, w = mask.shape[-2:]
    rows, cols = mask.any(3), mask.any(2)                       # (G, D, h), (G, D, w)
    valid = rows.any(2)
    y0 = rows.argmax(2)
    y1 = h - rows[..., ::-1].argmax(2)
    x0 = cols.argmax(2)
    x1 = w - cols[..., ::-1].argmax(2)
    boxes = np.stack([np.clip(x0 - margin, 0, w), np.clip(y0 - margin, 0, h),
                      np.clip(x1 + margin, 0, w), np.clip(y1 + margin, 0, h)], -1).astype(np.float32)
    idx = np.where(mask, prob, np.float32(-1)).reshape(*mask.shape[:2], h * w).argmax(2)
    points = np.stack([idx % w, idx // w], -1).astype(np.float32)
    boxes[~valid] = 0
    points[~valid] = 0
    return boxes, points, valid


@torch.no_grad()
def coarse_box_prompts(probs: torch.Tensor, margin: int = 2) -> Prompts:
    """The "-pcsw 0" ablation: per slice and class, the box of the argmax mask, no constraints.

    Same input and output conventions as :func:`pcsw_prompts` (``masks`` is the argmax mask of each
    class; ``windows`` is ``[0, D)`` for classes present anywhere in the slab; ``scores`` is 1 there).
    Runs entirely in torch on the input's device.
    """
    probs, _, batched = _as_batch(probs, None)
    N, D, _, h, w = probs.shape
    p = probs.detach().float()
    mask = _argmax_masks(p.transpose(1, 2).contiguous()).transpose(1, 2)   # (N, D, K, h, w)
    rows, cols = mask.any(4), mask.any(3)                          # (N, D, K, h), (N, D, K, w)
    valid = rows.any(-1)
    y0 = rows.to(torch.uint8).argmax(-1)
    y1 = h - rows.flip(-1).to(torch.uint8).argmax(-1)
    x0 = cols.to(torch.uint8).argmax(-1)
    x1 = w - cols.flip(-1).to(torch.uint8).argmax(-1)
    boxes = torch.stack([(x0 - margin).clamp(0, w), (y0 - margin).clamp(0, h),
                         (x1 + margin).clamp(0, w), (y1 + margin).clamp(0, h)], -1).float()
    idx = torch.where(mask, p[:, :, 1:], torch.full((), -1.0, device=p.device)).flatten(-2).argmax(-1)
    points = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).float()
    vf = valid.unsqueeze(-1)
    boxes, points = boxes * vf, points * vf
    anyk = valid.any(1)                                            # (N, K)
    windows = torch.stack([torch.zeros_like(anyk, dtype=torch.long),
                           torch.full_like(anyk, D, dtype=torch.long)], -1)
    windows = torch.where(anyk.unsqueeze(-1), windows, torch.full_like(windows, -1))
    out = Prompts.single_point(boxes, points, valid, masks=mask, windows=windows, scores=anyk.float())
    return _unbatch(out, batched)


def image_prompts(probs: torch.Tensor, image_size: int, cfg: PCSWConfig, use_pcsw: bool,
                  body: torch.Tensor | None = None, class_conf: torch.Tensor | None = None) -> Prompts:
    """Prompts of slabs of slices in model-input pixels, from coarse class probabilities probs (N,D,K+1,s,s):
    PCSW when ``use_pcsw``, else the unconstrained per-slice boxes of the coarse argmax (the ``-pcsw 0``
    ablation). Rows are flattened to N*D (the per-slab ``status`` stays (N,K)); a click is the centre of its
    coarse cell. ``class_conf`` (K,): calibrated gates (:meth:`SSSNet.gates`)."""
    with record_function("sss.pcsw"):
        p = pcsw_prompts(probs, body, cfg, class_conf) if use_pcsw else coarse_box_prompts(probs, margin=cfg.margin)
    fallback = p.fallback if p.fallback is not None else torch.zeros_like(p.valid)
    return p.replace(fallback=fallback).scaled(probs.shape[-1], image_size).flatten_rows(2)
