"""Volume-level evaluation shared by the 2D and 3D pipelines.

The loop hands the predictor nothing but the image volume (and its voxel spacing): labels are read
only afterwards, to score the prediction. ``tests/test_train_2d.py::test_predictions_do_not_depend_on_labels``
and its 3D twin in ``tests/test_train_3d.py`` check this by replacing the labels and comparing predictions.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from sam2_train.engine.checkpoint import atomic_write
from sam2_train.evaluation.metrics import summarize, volume_metrics

# predict(image (D,H,W) float32 in [0,1], spacing or None) -> label volume (D,H,W) int
PredictFn = Callable[[np.ndarray, "tuple[float, float, float] | None"], np.ndarray]


# What summary.json reports. ``asd`` is medpy's ``asd`` (mean distance from the prediction's surface to the
# ground truth's), the number SSL4MIS/BCP/ABD tables print; ``assd`` is the symmetric average surface distance.
REPORTED = ("dice", "jaccard", "hd95", "asd", "assd")
# Reported beside them: per class, the number of volumes whose ground truth holds the class and whose
# prediction does not (``empty_pred``). Those volumes have no HD95/ASD and are left out of those means.
COUNTED = ("empty_pred",)


def reported_metrics(m: dict, in_mm: bool) -> dict:
    """Pick the reported metrics from :func:`volume_metrics` output, distances in mm when spacing is known."""
    mm = "_mm" if in_mm else ""
    return {"dice": m["dice"], "jaccard": m["jaccard"], "hd95": m[f"hd95{mm}"],
            "asd": m[f"asd{mm}"], "assd": m[f"assd{mm}"], "empty_pred": m["empty_pred"]}


@dataclass
class EvalResult:
    summary: dict            # metric -> {class name -> value, "mean": value}, plus "protocol"/"split"
    rows: list[dict]         # one row per (volume, class) with dice/jaccard/hd95/asd
    predictions: dict | None = None  # name -> label volume of the volumes kept (``keep_predictions``)


def _as_numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def evaluate_volumes(volumes: Iterable[dict], predict: PredictFn, class_names: Sequence[str], *,
                     protocol: str, split: str, max_volumes: int = 0, save_pred: Callable | None = None,
                     keep_predictions: bool | Collection[str] = False, progress: bool = True) -> EvalResult:
    """Predict every volume (image only), then score it against its label.

    ``volumes`` yields dataset volume items ({"image", "label", "name", "spacing", "affine"}).
    HD95/ASD are in mm when the volume has a spacing, else in voxels (the summary says which).
    ``save_pred(item, pred)`` is called for each volume when given (``-save_pred``).
    ``keep_predictions``: True keeps every label volume in ``EvalResult.predictions``, a collection of names
    keeps those only.
    """
    num_classes = len(class_names)
    rows, per_case, preds = [], [], {}
    keep_all = keep_predictions is True
    keep_names = set() if isinstance(keep_predictions, bool) else set(keep_predictions)
    units = set()
    total = len(volumes) if hasattr(volumes, "__len__") else None
    if max_volumes and total is not None:
        total = min(total, max_volumes)
    bar = tqdm(volumes, total=total, desc=f"eval {split}", leave=False, disable=not progress, dynamic_ncols=True)
    for i, item in enumerate(bar):
        if max_volumes and i >= max_volumes:
            break
        spacing = item.get("spacing")
        image = _as_numpy(item["image"]).astype(np.float32, copy=False)
        pred = np.asarray(predict(image, spacing))
        if pred.shape != image.shape:
            raise RuntimeError(f"{item['name']}: prediction shape {pred.shape} != image shape {image.shape}")
        label = _as_numpy(item["label"])  # read only now, after the prediction exists
        m = reported_metrics(volume_metrics(pred, label, num_classes, spacing=spacing), spacing is not None)
        units.add("mm" if spacing is not None else "voxels")
        per_case.append(m)
        for k, cname in enumerate(class_names):
            rows.append({"case": item["name"], "class": cname,
                         **{key: float(m[key][k]) for key in (*REPORTED, *COUNTED)}})
        if save_pred is not None:
            save_pred(item, pred)
        if keep_all or item["name"] in keep_names:
            preds[item["name"]] = pred
    if not per_case:
        raise RuntimeError(f"no volumes to evaluate in split {split!r}")
    summary = summarize(per_case, class_names)
    summary.update(means_say_what_they_average(summary, class_names))
    summary["protocol"] = protocol
    summary["split"] = split
    summary["num_volumes"] = len(per_case)
    summary["distance_units"] = "/".join(sorted(units))
    return EvalResult(summary=summary, rows=rows, predictions=preds if (keep_all or keep_names) else None)


def means_say_what_they_average(summary: dict, class_names: Sequence[str]) -> dict:
    """``classes_in_mean``: the classes the "mean" of each metric averages (Dice defined in at least one
    volume), and ``classes_not_in_mean``: each other class with the reason, a class absent from the ground
    truth and the prediction of every volume (its Dice is undefined everywhere, so no mean can hold it)."""
    inside = [c for c in class_names if np.isfinite(summary["dice"][c])]
    return {"classes_in_mean": inside,
            "classes_not_in_mean": {c: "absent from the ground truth and the prediction of every volume"
                                    for c in class_names if c not in inside}}


def write_case_rows(path: str, rows: list[dict]) -> None:
    """Write per-(case, class) metric rows as CSV (atomically)."""
    with atomic_write(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "class", *REPORTED, *COUNTED])
        w.writeheader()
        w.writerows(rows)


def format_summary(summary: dict, class_names: Sequence[str]) -> str:
    """A small table: one line per metric, per-class values and the mean (Dice/Jaccard in %, said in the row
    label; summary.json and metrics.csv keep fractions), then the line
    ``empty``: per class the volumes predicted empty though the class is in the ground truth (left out of
    HD95/ASD), and their total."""
    head = f"{'':8s}" + "".join(f"{c:>9s}" for c in class_names) + f"{'mean':>9s}"
    lines = [f"[{summary.get('split')}, protocol {summary.get('protocol')}, "
             f"{summary.get('num_volumes')} volumes; HD95/ASD in {summary.get('distance_units')}]", head]
    for key in REPORTED:
        percent = key in ("dice", "jaccard")
        vals = [summary[key][c] for c in class_names] + [summary[key]["mean"]]
        label = f"{key} %" if percent else key
        lines.append(f"{label:8s}" + "".join(f"{v * (100.0 if percent else 1.0):9.2f}" for v in vals))
    if "empty_pred" in summary:
        counts = [summary["empty_pred"][c] for c in class_names] + [summary["empty_pred"]["total"]]
        lines.append(f"{'empty':8s}" + "".join(f"{v:9d}" for v in counts))
    for c, why in (summary.get("classes_not_in_mean") or {}).items():
        lines.append(f"mean leaves out {c}: {why}")
    return "\n".join(lines)
