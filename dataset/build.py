"""``build_datasets(DataConf, script) -> Splits``: the one entry point of the training scripts."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from .base import (LabeledClipDataset, LabeledSliceDataset, UnlabeledClipDataset, UnlabeledSlabDataset,
                   VolumeDataset)
from .errors import DatasetError


@dataclass
class Splits:
    labeled: object
    unlabeled: Optional[object]
    val: object
    test: Optional[object]
    class_names: tuple
    num_classes: int
    dataset: str = ""
    root: str = ""
    test_missing: Optional[str] = None     # why ``test`` is None
    unlabeled_missing: Optional[str] = None
    info: dict = field(default_factory=dict)
    case_names: dict = field(default_factory=dict)  # split -> case names (labeled, unlabeled, val, test)

    def require_test(self):
        """The test split, or DatasetError saying why it is unavailable."""
        if self.test is None:
            raise DatasetError(self.test_missing or f"{self.root}: no test split")
        return self.test

    def train_datasets(self):
        return [d for d in (self.labeled, self.unlabeled) if d is not None]

    def set_epoch(self, epoch: int):
        for d in self.train_datasets():
            d.set_epoch(epoch)

    def summary(self) -> str:
        def n(d):
            return "none" if d is None else str(len(d))
        dropped = self.info.get("unlabeled_dropped") or []
        return (f"{self.dataset} at {self.root}: labeled {n(self.labeled)}, unlabeled {n(self.unlabeled)}, "
                f"val {n(self.val)} volumes, test {n(self.test)} volumes; classes {', '.join(self.class_names)}"
                + (f"; {len(dropped)} unlabeled volume(s) dropped: their patient is in the validation or test split "
                   f"(e.g. {os.path.basename(dropped[0])})" if dropped else ""))


@dataclass(frozen=True)
class DataConf:
    """What the datasets of a run are built from (``cfg.data_conf`` fills it from the flags).

    ``dataset``: acdc | bhsd | custom | demo; ``data_path``: its root (None: demo's ``data/demo_<kind>``).
    ``labeled_num`` / ``labeled_ratio``: labeled patients (ACDC) or volumes (None: the dataset's rule).
    ``image_size``: model input size S. ``slab_len``: 2D unlabeled slab length; ``video_length``: 3D clip
    length. ``hu_window``: CT window (BHSD/custom NIfTI). ``class_names``: custom data ("A,B,...", None:
    classes.txt). ``fg_oversample``: 3D share of labeled clips centred on a foreground class. ``method``:
    unlabeled data is required unless ``supervised``."""
    dataset: str
    data_path: Optional[str]
    image_size: int
    seed: int
    method: str
    slab_len: int
    video_length: Optional[int]
    hu_window: tuple
    fg_oversample: float
    labeled_num: Optional[int] = None
    labeled_ratio: Optional[float] = None
    class_names: Optional[str] = None


def assemble(src: dict, conf: DataConf, script: str, dataset: str, root: str) -> Splits:
    """Turn volume references into the datasets the script needs."""
    if script not in ("2d", "3d"):
        raise ValueError(f"script must be '2d' or '3d', got {script!r}")
    size, seed, method = conf.image_size, conf.seed, conf.method
    class_names = tuple(src["class_names"])
    if script == "2d":
        items = src.get("labeled_slices")
        if items is None:
            items = [(r, z) for r in src["labeled_refs"] for z in range(r.num_slices())]
        labeled = LabeledSliceDataset(items, size, seed)
    else:
        labeled = LabeledClipDataset(src["labeled_refs"], conf.video_length, size, seed,
                                     fg_oversample=conf.fg_oversample)
    unl_refs = src.get("unlabeled_refs") or []
    unlabeled, unl_missing = None, None
    if unl_refs:
        if script == "2d":
            unlabeled = UnlabeledSlabDataset(unl_refs, conf.slab_len, size, seed)
        else:
            unlabeled = UnlabeledClipDataset(unl_refs, conf.video_length, size, seed)
    else:
        unl_missing = src.get("unlabeled_missing") or f"{root}: no unlabeled data (all training volumes are labeled)"
        if method != "supervised":
            raise DatasetError(f"{unl_missing}; -method {method} needs unlabeled data "
                               f"(lower -labeled_num, add unlabeled volumes, or use -method supervised)")
    val = VolumeDataset(src["val_refs"], "validation")
    test = None if src.get("test_refs") is None else VolumeDataset(src["test_refs"], "test")
    names = lambda refs: [r.name for r in refs or []]  # noqa: E731
    case_names = {"labeled": names(src["labeled_refs"]), "unlabeled": names(unl_refs),
                  "val": names(src["val_refs"]), "test": names(src.get("test_refs")),
                  "unlabeled_dropped": [os.path.basename(p) for p in src.get("info", {}).get("unlabeled_dropped", [])]}
    clash = set(case_names["val"]) & set(case_names["test"])
    if clash:
        raise DatasetError(f"{root}: case {sorted(clash)[0]} is in both the validation and the test split")
    return Splits(labeled=labeled, unlabeled=unlabeled, val=val, test=test, class_names=class_names,
                  num_classes=len(class_names), dataset=dataset, root=root,
                  test_missing=src.get("test_missing"), unlabeled_missing=unl_missing,
                  info=src.get("info", {}), case_names=case_names)


def build_datasets(conf: DataConf, script: str) -> Splits:
    """Build the datasets of ``conf.dataset`` (acdc, bhsd, custom, demo) for ``script`` ("2d"/"3d").
    Raises :class:`DatasetError` with a one-line message on bad input."""
    dataset, root, labeled_num, ratio = conf.dataset, conf.data_path, conf.labeled_num, conf.labeled_ratio
    hu = tuple(conf.hu_window)
    if dataset == "demo":
        from .demo import ensure_demo
        kind = "acdc" if script == "2d" else "bhsd"
        if root is None:
            root = os.path.join("data", f"demo_{kind}")
        if os.path.isdir(root):
            if os.path.isfile(os.path.join(root, "train_slices.list")):
                kind = "acdc"
            elif os.path.isdir(os.path.join(root, "label_192")):
                kind = "bhsd"
        ensure_demo(root, kind)
        dataset_kind = kind
    else:
        dataset_kind = dataset
    if root is None:
        raise DatasetError("no -data_path given")
    if dataset_kind == "acdc":
        from .acdc import acdc_sources
        src = acdc_sources(root, labeled_num if labeled_num is not None else (2 if dataset == "demo" else 3), ratio)
    elif dataset_kind == "bhsd":
        from .bhsd import bhsd_sources
        src = bhsd_sources(root, labeled_num, ratio, hu)
    elif dataset_kind == "custom":
        from .custom import custom_sources
        src = custom_sources(root, labeled_num, ratio, hu, conf.class_names)
    else:
        raise DatasetError(f"unknown dataset {dataset!r}")
    return assemble(src, conf, script, dataset, root)
