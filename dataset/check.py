"""Check every data file a run will read, before the run starts.

    python -m dataset.check -dataset D -data_path P [-script 2d|3d] [any train_*.py data flag]

For each file: it opens; it has the expected keys (h5 ``image``/``label``) and dimensions (2-D slice,
3-D volume); labels are integers in ``0..K``; a NIfTI label agrees with its image on shape, orientation,
spacing and affine; images are not empty and hold no NaN/inf. Slices of one volume share one size.
Files are checked in parallel (``num_workers`` processes, the ``-num_workers`` of the run) with a tqdm bar.

Results are cached per file, keyed by (absolute path, size, mtime) of every file a check reads plus what was
checked (kind, number of classes, label or not), in one JSON file: ``$SSS_CACHE_DIR/data_check.json``
(default ``$XDG_CACHE_HOME/sss`` or ``~/.cache/sss``). A second run re-reads only new or changed files.

Library use: :func:`check_splits` (the datasets of a training run) or :func:`check_volumes` (lists of
volume references, e.g. the split ``evaluate.py`` reads). On a failure they raise :class:`DatasetError`
with one line naming the first bad file and what is wrong (and how many other files are bad).
The CLI prints every problem, a summary (volumes and slices per split, class histogram, spacing and
intensity ranges) and exits 0 (all good) or 1.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from .base import H5SliceStackRef, H5VolumeRef, NiftiVolumeRef, PngVolumeRef
from .errors import DatasetError

CACHE_VERSION = 2
#: a voxel size above this (mm) is reported as absurd (a warning: a header in the wrong unit, say)
MAX_SPACING_MM = 100.0
CACHE_NAME = "data_check.json"

# A task is (kind, image path, label path or None, num_classes, expected image dimensions).
# kind: "h5" (keys image[/label] in one file), "nifti" (image + separate label file), "png" (image + mask).


def default_cache_file() -> str:
    """``$SSS_CACHE_DIR/data_check.json``; default folder ``$XDG_CACHE_HOME/sss`` or ``~/.cache/sss``."""
    folder = os.environ.get("SSS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "sss")
    return os.path.join(folder, CACHE_NAME)


# ------------------------------------------------------------------------------------------------ checks
def _image_stats(x: np.ndarray, path: str, ndim: int) -> dict:
    """Dimensions, not empty, finite; returns min/max."""
    if x.ndim != ndim:
        raise DatasetError(f"{path}: expected a {ndim}-D image, got shape {tuple(x.shape)}")
    if x.size == 0:
        raise DatasetError(f"{path}: image is empty (shape {tuple(x.shape)})")
    if x.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise DatasetError(f"{path}: image has {bad} non-finite values (NaN/inf); expected finite intensities")
    elif x.dtype.kind not in "biu":
        raise DatasetError(f"{path}: image has dtype {x.dtype}; expected numbers")
    return {"min": float(x.min()), "max": float(x.max()), "zero": not bool(np.any(x))}


def _label_hist(y: np.ndarray, num_classes: int, path: str) -> list[int]:
    """Voxels per class 0..K; DatasetError for non-integer values or values outside 0..K."""
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DatasetError(f"{path}: label map has non-integer values (expected integers 0..{num_classes})")
    elif y.dtype.kind not in "biu":
        raise DatasetError(f"{path}: label map has dtype {y.dtype}; expected integers 0..{num_classes}")
    if y.size and (y.min() < 0 or y.max() > num_classes):
        bad = sorted(int(v) for v in np.unique(y) if v < 0 or v > num_classes)[:5]
        raise DatasetError(f"{path}: label values {bad} outside the class range 0..{num_classes}")
    return np.bincount(y.astype(np.int64, copy=False).ravel(), minlength=num_classes + 1).tolist()


def _check_h5(path: str, with_label: bool, num_classes: int, ndim: int) -> dict:
    from .io import read_h5

    arrs = read_h5(path, ("image", "label") if with_label else ("image",))
    out = _image_stats(arrs[0], path, ndim)
    out.update(shape=list(arrs[0].shape), slices=1 if ndim == 2 else int(arrs[0].shape[0]))
    if with_label:
        if arrs[1].shape != arrs[0].shape:
            raise DatasetError(f"{path}: label shape {tuple(arrs[1].shape)} != image shape {tuple(arrs[0].shape)}")
        out["hist"] = _label_hist(arrs[1], num_classes, path)
    return out


def _nifti_data(img, path: str) -> np.ndarray:
    try:
        return np.asanyarray(img.dataobj)
    except Exception as e:  # truncated gzip, short file ...
        raise DatasetError(f"{path}: cannot read NIfTI data ({type(e).__name__}: {e})") from None


def _check_nifti(image_path: str, label_path: str | None, num_classes: int) -> dict:
    import nibabel as nib

    from .io import _nib_load, affine_problem

    img = _nib_load(image_path)
    if problem := affine_problem(img.affine):
        raise DatasetError(f"{image_path}: {problem}")
    data = _nifti_data(img, image_path).reshape(img.shape[:3])
    if data.dtype.kind == "f" and data.dtype != np.float32:
        with np.errstate(over="ignore", invalid="ignore"):     # as training reads it: scaled, in float32
            data = data.astype(np.float32)
    out = _image_stats(data, image_path, 3)
    ornt = nib.orientations.io_orientation(img.affine)
    zooms = np.sqrt((np.asarray(img.affine)[:3, :3] ** 2).sum(axis=0))
    ras_zoom = [0.0, 0.0, 0.0]
    for ax in range(3):
        ras_zoom[int(ornt[ax, 0])] = float(zooms[ax])
    out.update(shape=list(img.shape[:3]), slices=int(img.shape[int(np.argmax(ornt[:, 0] == 2))]),
               spacing=[ras_zoom[2], ras_zoom[1], ras_zoom[0]])
    if label_path is None:
        return out
    lab = _nib_load(label_path)
    of = f"of {image_path}"
    if problem := affine_problem(lab.affine):
        raise DatasetError(f"{label_path}: {problem}")
    if tuple(lab.shape[:3]) != tuple(img.shape[:3]):
        raise DatasetError(f"{label_path}: label shape {tuple(lab.shape[:3])} != image shape "
                           f"{tuple(img.shape[:3])} {of}")
    a, b = "".join(nib.aff2axcodes(img.affine)), "".join(nib.aff2axcodes(lab.affine))
    if a != b:
        raise DatasetError(f"{label_path}: label orientation {b} != image orientation {a} {of}")
    lzooms = np.sqrt((np.asarray(lab.affine)[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(lzooms, zooms, rtol=1e-3, atol=1e-4):
        raise DatasetError(f"{label_path}: label spacing {np.round(lzooms, 4).tolist()} mm != image spacing "
                           f"{np.round(zooms, 4).tolist()} mm {of}")
    diff = float(np.abs(np.asarray(lab.affine) - np.asarray(img.affine)).max())
    if diff > 1e-3:
        raise DatasetError(f"{label_path}: label affine differs from the image affine {of} (by up to {diff:.4g} mm)")
    out["hist"] = _label_hist(_nifti_data(lab, label_path), num_classes, label_path)
    return out


def _check_png(image_path: str, mask_path: str | None, num_classes: int) -> dict:
    from .io import read_png

    x = read_png(image_path)
    out = _image_stats(x, image_path, 2)
    out.update(shape=list(x.shape), slices=1)
    if mask_path is not None:
        m = read_png(mask_path)
        if m.shape != x.shape:
            raise DatasetError(f"{mask_path}: mask shape {m.shape} != image shape {x.shape} of {image_path}")
        out["hist"] = _label_hist(m, num_classes, mask_path)
    return out


def check_file(task: tuple) -> dict:
    """Check one task (see the module comment); returns its stats or raises DatasetError."""
    kind, image, label, num_classes, ndim = task
    if kind == "h5":
        return _check_h5(image, label is not None, num_classes, ndim)
    if kind == "nifti":
        return _check_nifti(image, label, num_classes)
    if kind == "png":
        return _check_png(image, label, num_classes)
    raise ValueError(f"unknown check kind {kind!r}")


def _run_task(indexed: tuple) -> tuple:
    """Worker entry: (index, task) -> (index, stats | None, error line | None); never raises."""
    i, task = indexed
    try:
        return i, check_file(task), None
    except DatasetError as e:
        return i, None, str(e)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not a traceback
        msg = " ".join(str(e).split())
        return i, None, f"{task[1]}: cannot be checked ({type(e).__name__}: {msg})"


# ------------------------------------------------------------------------------------------------ tasks
def ref_tasks(ref, with_label: bool) -> list[tuple]:
    """The checks of one volume reference (one task per file, or per image/label pair)."""
    K = int(ref.num_classes)
    lab = with_label and ref.has_label
    if isinstance(ref, H5SliceStackRef):
        return [("h5", p, p if lab else None, K, 2) for p in ref.paths]
    if isinstance(ref, H5VolumeRef):
        return [("h5", ref.image_path, ref.image_path if lab else None, K, 3)]
    if isinstance(ref, NiftiVolumeRef):
        return [("nifti", ref.image_path, ref.label_path if lab else None, K, 3)]
    if isinstance(ref, PngVolumeRef):
        masks = ref.mask_paths if lab else [None] * len(ref.paths)
        return [("png", p, m, K, 2) for p, m in zip(ref.paths, masks)]
    raise TypeError(f"no data check for volume references of type {type(ref).__name__}")


def dataset_refs(ds) -> list:
    """The volume references a dataset of :mod:`dataset.base` reads, in order, without repeats."""
    refs = getattr(ds, "refs", None)
    if refs is None:
        refs = [r for r, _ in ds.items]
    seen, out = set(), []
    for r in refs:
        if id(r) not in seen:
            seen.add(id(r))
            out.append(r)
    return out


def _cache_key(task: tuple) -> str | None:
    kind, image, label, K, ndim = task
    files = []
    for p in dict.fromkeys(x for x in (image, label) if x is not None):
        try:
            st = os.stat(p)
        except OSError:
            return None                      # missing: never cached, the check reports it
        files.append([os.path.abspath(p), st.st_size, st.st_mtime_ns])
    return json.dumps([kind, label is not None, K, ndim, files])


# ------------------------------------------------------------------------------------------------ cache
def _load_cache(path: str) -> dict:
    try:
        with open(path) as f:
            js = json.load(f)
        return js["entries"] if js.get("version") == CACHE_VERSION and isinstance(js.get("entries"), dict) else {}
    except (OSError, ValueError, AttributeError, KeyError):
        return {}


def _save_cache(path: str, new: dict) -> None:
    """Merge ``new`` into the cache file (re-read first; atomic replace with a unique temporary name).
    A cache that cannot be written is skipped silently: it only saves time."""
    if not new:
        return
    try:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        entries = _load_cache(path)
        entries.update(new)
        fd, tmp = tempfile.mkstemp(prefix=".data_check-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": CACHE_VERSION, "entries": entries}, f)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    except OSError:
        pass


# ------------------------------------------------------------------------------------------------ report
@dataclass
class CheckReport:
    """What a check found. ``splits``: name -> {volumes, slices, hist, spacing_min/max, min, max}."""
    files: int = 0
    cached: int = 0
    seconds: float = 0.0
    errors: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    splits: dict = field(default_factory=dict)
    class_names: tuple = ()

    def line(self) -> str:
        status = "ok" if not self.errors else f"{len(self.errors)} bad file(s)"
        return (f"data check: {self.files} file(s), {self.cached} unchanged since the last check, "
                f"{self.seconds:.1f} s: {status}")

    def summary(self) -> str:
        rows = [self.line()]
        for name, s in self.splits.items():
            sp = (" spacing (z,y,x) " + " / ".join(f"{a:.3g}-{b:.3g}" for a, b in
                                                   zip(s["spacing_min"], s["spacing_max"])) + " mm"
                  if s.get("spacing_min") else "")
            rng = f" intensity {s['min']:.4g}..{s['max']:.4g}" if s.get("min") is not None else ""
            rows.append(f"  {name}: {s['volumes']} volume(s), {s['slices']} slice(s);{sp}{rng}")
            hist = s.get("hist")
            if hist:
                total = max(1, sum(hist))
                names = ("background", *self.class_names) if len(self.class_names) == len(hist) - 1 else \
                    tuple(str(i) for i in range(len(hist)))
                rows.append("    classes (voxels): " + ", ".join(
                    f"{n} {c} ({100.0 * c / total:.3g}%)" for n, c in zip(names, hist)))
        return "\n".join(rows)

    def raise_if_bad(self) -> None:
        if self.errors:
            more = (f" (and {len(self.errors) - 1} more bad file(s): `python -m dataset.check` lists them)"
                    if len(self.errors) > 1 else "")
            raise DatasetError(f"{self.errors[0]}{more}")


def _aggregate(name: str, refs_tasks: list, tasks: list, stats: list, report: CheckReport) -> None:
    """Per-split totals; slices of one volume must share one size (reported like a file error)."""
    agg = {"volumes": 0, "slices": 0, "hist": None, "spacing_min": None, "spacing_max": None,
           "min": None, "max": None}
    for ref, idx in refs_tasks:
        agg["volumes"] += 1
        got = [(i, stats[i]) for i in idx if stats[i] is not None]
        if len(got) > 1 and got[0][1]["slices"] == 1:
            first = got[0][1]["shape"]
            for i, s in got[1:]:
                if s["shape"] != first:
                    report.errors.append(f"{tasks[i][1]}: slice shape {tuple(s['shape'])} differs from "
                                         f"{tuple(first)} of the other slices of volume {ref.name}")
                    break
        for _, s in got:
            agg["slices"] += s["slices"]
            agg["min"] = s["min"] if agg["min"] is None else min(agg["min"], s["min"])
            agg["max"] = s["max"] if agg["max"] is None else max(agg["max"], s["max"])
            if s.get("hist") is not None:
                h = np.asarray(s["hist"], np.int64)
                agg["hist"] = h if agg["hist"] is None else agg["hist"] + h
            if s.get("spacing") is not None:
                sp = np.asarray(s["spacing"])
                agg["spacing_min"] = sp if agg["spacing_min"] is None else np.minimum(agg["spacing_min"], sp)
                agg["spacing_max"] = sp if agg["spacing_max"] is None else np.maximum(agg["spacing_max"], sp)
    for k in ("hist", "spacing_min", "spacing_max"):
        if agg[k] is not None:
            agg[k] = agg[k].tolist()
    report.splits[name] = agg


def _files_line(paths: list[str], most: int = 3) -> str:
    more = f" and {len(paths) - most} more" if len(paths) > most else ""
    return ", ".join(paths[:most]) + more


def _suspicious(layout: dict, tasks: list, stats: list, report: CheckReport) -> None:
    """Data that reads but cannot train (an error: a labeled set without any foreground) or that looks wrong (a
    warning, one line per kind naming the files: all-zero images, voxel sizes of more than MAX_SPACING_MM)."""
    good = [(i, s) for i, s in enumerate(stats) if s is not None]
    zero = [tasks[i][1] for i, s in good if s.get("zero")]
    if zero:
        report.warnings.append(f"{len(zero)} image file(s) hold only zeros: {_files_line(zero)}")
    wide = [f"{tasks[i][1]} ({' x '.join(f'{v:.4g}' for v in s['spacing'])} mm)" for i, s in good
            if s.get("spacing") and max(s["spacing"]) > MAX_SPACING_MM]
    if wide:
        report.warnings.append(f"{len(wide)} volume(s) have a voxel size over {MAX_SPACING_MM:g} mm (a header in "
                               f"the wrong unit?): {_files_line(wide)}")
    labeled = [i for _, idx in layout.get("labeled", []) for i in idx]
    hist = report.splits.get("labeled", {}).get("hist")
    if labeled and hist is not None and not any(hist[1:]) and not report.errors:
        files = list(dict.fromkeys(tasks[i][2] or tasks[i][1] for i in labeled))
        report.errors.append(f"{_files_line(files)}: every label of the {len(files)} labeled file(s) is background "
                             "(0); training needs foreground labels (check the label files, and -class_names for "
                             "custom data)")


def print_warnings(report: CheckReport) -> None:
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ entry points
def check_volumes(groups: dict, *, num_workers: int = 0, cache_file: str | None = None, progress: bool = True,
                  raise_on_error: bool = True, class_names=()) -> CheckReport:
    """Check the files of ``groups``: split name -> list of (volume reference, read its label?).

    ``num_workers`` > 1 checks in that many processes. ``cache_file``: default :func:`default_cache_file`;
    ``""`` disables the cache. Returns a :class:`CheckReport`; with ``raise_on_error`` a bad file raises
    :class:`DatasetError` (one line naming it) instead."""
    from tqdm import tqdm

    t0 = time.time()
    cache_file = default_cache_file() if cache_file is None else cache_file
    cache = _load_cache(cache_file) if cache_file else {}
    tasks, index, layout = [], {}, {}
    for name, items in groups.items():
        layout[name] = []
        for ref, with_label in items:
            idx = []
            for t in ref_tasks(ref, with_label):
                if t not in index:
                    index[t] = len(tasks)
                    tasks.append(t)
                idx.append(index[t])
            layout[name].append((ref, idx))
    keys = [_cache_key(t) for t in tasks]
    stats = [cache.get(k) if k is not None else None for k in keys]
    todo = [(i, t) for i, t in enumerate(tasks) if stats[i] is None]
    errors = {}
    bar = tqdm(total=len(todo), desc="check data", unit="file", disable=not progress or not todo,
               dynamic_ncols=True, leave=False)
    workers = min(int(num_workers), len(todo))
    if workers > 1:
        with mp.get_context().Pool(workers) as pool:
            results = pool.imap_unordered(_run_task, todo, chunksize=max(1, len(todo) // (8 * workers)))
            for i, s, err in results:
                stats[i] = s
                if err:
                    errors[i] = err
                bar.update(1)
    else:
        for item in todo:
            i, s, err = _run_task(item)
            stats[i] = s
            if err:
                errors[i] = err
            bar.update(1)
    bar.close()
    report = CheckReport(files=len(tasks), cached=len(tasks) - len(todo), class_names=tuple(class_names))
    report.errors = [errors[i] for i in sorted(errors)]
    for name, refs_tasks in layout.items():
        _aggregate(name, refs_tasks, tasks, stats, report)
    _suspicious(layout, tasks, stats, report)
    if cache_file:
        _save_cache(cache_file, {keys[i]: stats[i] for i, _ in todo if stats[i] is not None and keys[i]})
    report.seconds = time.time() - t0
    if raise_on_error:
        report.raise_if_bad()
    return report


def split_groups(splits, *, unlabeled: bool = True) -> dict:
    """The (reference, read label?) lists of a :class:`dataset.build.Splits`, by split name. ``unlabeled``:
    include the unlabeled training set (a supervised run does not read it)."""
    groups = {"labeled": [(r, True) for r in dataset_refs(splits.labeled)]}
    if unlabeled and splits.unlabeled is not None:
        groups["unlabeled"] = [(r, False) for r in dataset_refs(splits.unlabeled)]
    groups["val"] = [(r, True) for r in dataset_refs(splits.val)]
    if splits.test is not None:
        groups["test"] = [(r, True) for r in dataset_refs(splits.test)]
    return groups


def check_splits(splits, *, unlabeled: bool = True, num_workers: int = 0, cache_file: str | None = None,
                 progress: bool = True, raise_on_error: bool = True) -> CheckReport:
    """Check every file the training run on ``splits`` reads (see :func:`check_volumes`)."""
    return check_volumes(split_groups(splits, unlabeled=unlabeled), num_workers=num_workers,
                         cache_file=cache_file, progress=progress, raise_on_error=raise_on_error,
                         class_names=splits.class_names)


def check_before_training(splits, *, unlabeled: bool, num_workers: int, is_main: bool = True) -> CheckReport:
    """The training scripts' call: check what the run reads (the unlabeled set when ``unlabeled``) with
    ``num_workers`` processes, print one line on the main process, raise DatasetError on a bad file."""
    report = check_splits(splits, unlabeled=unlabeled, num_workers=num_workers, progress=is_main)
    if is_main:
        print(report.line(), flush=True)
        print_warnings(report)
    return report


# ------------------------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    """``python -m dataset.check -dataset D -data_path P [-script 2d|3d] [data flags]``: exit 0 or 1."""
    import argparse

    import cfg
    from .build import build_datasets
    from .registry import dataset_names

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-script", choices=("2d", "3d"), default=None)
    known, rest = pre.parse_known_args(argv)
    if any(a in ("-h", "--help") for a in rest):
        print(__doc__)
        return 0
    script = known.script
    if script is None:
        from .registry import dataset_spec
        name = rest[rest.index("-dataset") + 1].lower() if "-dataset" in rest[:-1] else "demo"
        script = dataset_spec(name).default_script if name in dataset_names() else "2d"
    config = cfg.parse_config(rest + ["-method", "supervised"], script=script)
    try:
        splits = build_datasets(config.data, script, image_size=config.model.image_size, seed=config.run.seed,
                                unlabeled=False)
        report = check_splits(splits, unlabeled=True, num_workers=config.run.num_workers, raise_on_error=False)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    print_warnings(report)
    print(f"{splits.dataset} at {splits.root} ({script})")
    print(report.summary())
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
