"""Per-volume, per-class segmentation metrics, computed with MONAI and checked
against medpy in ``tests/test_metrics.py``. Conventions are documented in ``docs/metrics.md``.

``volume_metrics(pred, gt, num_classes, spacing=None)`` returns, for the foreground classes ``1..K``,
``(K,)`` float64 arrays:

=================  =====================================================================================
key                definition
=================  =====================================================================================
``dice``           ``2|P & G| / (|P| + |G|)`` -- ``monai.metrics.compute_dice``           (= medpy ``dc``)
``jaccard``        ``|P & G| / |P | G|``      -- ``monai.metrics.compute_iou``            (= medpy ``jc``)
``hd95``           95th percentile (linear interpolation) of the pooled symmetric surface distances,
                   i.e. of ``d(P->G)`` concatenated with ``d(G->P)``                  (= medpy ``hd95``)
``asd``            mean of ``d(P->G)`` only, the *directed* average surface distance -- MONAI
                   ``symmetric=False``   (= medpy ``asd``, the number SSL4MIS / BCP / ABD report as "ASD")
``assd``           mean of the pooled symmetric surface distances -- MONAI
                   ``compute_average_surface_distance(symmetric=True)``           (= medpy 0.5 ``assd``)
``*_mm``           ``hd95``/``asd``/``assd`` in mm, only when ``spacing`` is given
``empty_pred``     1 where the class is in the ground truth and the prediction is empty (a missed class:
                   its distances are left out of the means), 0 where both hold it, NaN where the ground
                   truth does not; :func:`summarize` counts it (a sum over volumes)
=================  =====================================================================================

Surfaces are MONAI's ``get_mask_edges`` (mask XOR its binary erosion with the face-connected structuring
element, voxels on the array border count as surface), which is exactly medpy's ``__surface_distances``;
distances are Euclidean between surface-voxel centres, scaled by ``spacing``. HD95 is computed from
MONAI's ``get_edge_surface_distance`` rather than ``compute_hausdorff_distance(percentile=95)`` because the
latter takes the *maximum of the two directed* 95th percentiles, which differs from medpy's (and SSL4MIS's)
percentile of the pooled distances (e.g. 1.41 vs 1.0 voxels on the same pair).

Empty masks (per class and volume, ``P`` = prediction, ``G`` = ground truth):

* both empty: every metric is NaN -- the class is left out of that volume's means;
* exactly one empty: ``dice = jaccard = 0``; distances are ``empty_distance`` (default NaN, left out of the
  means; SSL4MIS's validation code uses 0 for an empty prediction -- pass ``empty_distance=0`` to mimic it).

``summarize(rows, class_names)`` averages per class over volumes ignoring NaN, then over classes ignoring
NaN ("mean"); the count keys (``COUNT_KEYS``: ``empty_pred``) are summed per class instead, with the sum
over classes as "total".
"""
from __future__ import annotations

import warnings
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou
from monai.metrics.utils import get_edge_surface_distance

__all__ = ["volume_metrics", "summarize", "METRIC_KEYS", "COUNT_KEYS"]

METRIC_KEYS = ("dice", "jaccard", "hd95", "asd", "assd")
COUNT_KEYS = ("empty_pred",)        # per-volume 0/1 indicators that summarize() counts
_DIST_KEYS = ("hd95", "asd", "assd")


def _as_long_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().long()
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x))).long()


def _surface_metrics(p: torch.Tensor, g: torch.Tensor, spacing) -> tuple[float, float, float]:
    """(hd95, asd (directed), assd (symmetric)) of two non-empty boolean masks, in units of ``spacing``
    (None = voxels)."""
    with warnings.catch_warnings():  # MONAI 1.5/1.6 warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        _, (d_pg, d_gp), _ = get_edge_surface_distance(p, g, distance_metric="euclidean", spacing=spacing,
                                                       symmetric=True, warn_empty=False)
    d_pg = d_pg.double().cpu().numpy()
    pooled = np.concatenate([d_pg, d_gp.double().cpu().numpy()])
    return float(np.percentile(pooled, 95)), float(d_pg.mean()), float(pooled.mean())


def volume_metrics(pred, gt, num_classes: int, spacing: Sequence[float] | None = None, *,
                   empty_distance: float = float("nan")) -> dict[str, np.ndarray]:
    """Per-class metrics of one volume.

    Args:
        pred, gt: ``(D, H, W)`` (or ``(H, W)``) integer label maps, numpy or torch, values in ``0..K``.
        num_classes: ``K``, the number of foreground classes (background 0 is not scored).
        spacing: voxel size along each axis of ``pred`` (``(s_D, s_H, s_W)`` in mm), or None.
        empty_distance: HD95/ASD value when exactly one of prediction / ground truth is empty.
    Returns:
        dict of ``(K,)`` float64 arrays: ``dice``, ``jaccard``, ``hd95``, ``asd`` (directed), ``assd`` (symmetric;
        distances in voxels), plus ``hd95_mm``, ``asd_mm``, ``assd_mm`` when ``spacing`` is given; ``empty_pred``
        (1 = class in the ground truth but not predicted, 0 = predicted, NaN = not in the ground truth). NaN
        marks a class left out of the means (see the module docstring).
    """
    p, g = _as_long_tensor(pred), _as_long_tensor(gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    if spacing is not None:
        spacing = [float(s) for s in spacing]
        if len(spacing) != p.dim():
            raise ValueError(f"spacing has {len(spacing)} values for a {p.dim()}-D volume")
    K = int(num_classes)
    out = {k: np.full(K, np.nan) for k in ("dice", "jaccard") + _DIST_KEYS}
    if spacing is not None:
        out.update({f"{k}_mm": np.full(K, np.nan) for k in _DIST_KEYS})
    empty_pred = np.full(K, np.nan)
    for c in range(1, K + 1):
        pc, gc = p == c, g == c
        p_any, g_any = bool(pc.any()), bool(gc.any())
        i = c - 1
        if g_any:
            empty_pred[i] = 0.0 if p_any else 1.0
        if not (p_any or g_any):
            continue                                   # both empty: NaN everywhere
        yp, yg = pc[None, None].float(), gc[None, None].float()
        out["dice"][i] = float(compute_dice(yp, yg, include_background=True, ignore_empty=False))
        out["jaccard"][i] = float(compute_iou(yp, yg, include_background=True, ignore_empty=False))
        if not (p_any and g_any):
            for k in out:
                if k not in ("dice", "jaccard"):
                    out[k][i] = empty_distance
            continue
        for k, v in zip(_DIST_KEYS, _surface_metrics(pc, gc, None)):
            out[k][i] = v
        if spacing is not None:
            for k, v in zip(_DIST_KEYS, _surface_metrics(pc, gc, spacing)):
                out[f"{k}_mm"][i] = v
    out["empty_pred"] = empty_pred
    return out


def _nanmean(a: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # "Mean of empty slice" -> NaN is intended
        return np.nanmean(a, axis=axis)


def summarize(per_case_rows: Iterable[Mapping[str, np.ndarray]], class_names: Sequence[str],
              metrics: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Average ``volume_metrics`` outputs over volumes.

    Args:
        per_case_rows: one dict per volume as returned by :func:`volume_metrics`.
        class_names: the ``K`` foreground class names, label 1 first.
        metrics: keys to summarise (default: every key present in all rows, in the rows' order).
    Returns:
        ``{metric: {class_name: mean over volumes (NaN ignored), ..., "mean": mean over classes (NaN
        ignored)}}``; a class NaN in every volume is NaN and does not enter "mean". A count key
        (``COUNT_KEYS``) gives ``{class_name: int sum over volumes (NaN ignored), ..., "total": int}``.
    """
    rows = list(per_case_rows)
    if not rows:
        raise ValueError("no per-case rows to summarise")
    if metrics is None:
        metrics = [k for k in rows[0] if all(k in r for r in rows)]
    out: dict[str, dict[str, float]] = {}
    for m in metrics:
        table = np.stack([np.asarray(r[m], dtype=np.float64) for r in rows])   # (cases, K)
        if table.shape[1] != len(class_names):
            raise ValueError(f"{m}: {table.shape[1]} classes but {len(class_names)} class names")
        if m in COUNT_KEYS:
            counts = np.nansum(table, axis=0).astype(np.int64)
            out[m] = {name: int(v) for name, v in zip(class_names, counts)}
            out[m]["total"] = int(counts.sum())
            continue
        per_class = _nanmean(table, axis=0)
        out[m] = {name: float(v) for name, v in zip(class_names, per_class)}
        out[m]["mean"] = float(_nanmean(per_class))
    return out
