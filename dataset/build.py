"""``build_datasets(DataConf, script, image_size=..., seed=...) -> Splits``: the one entry point of the scripts."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from sam2_train.engine.config import DataConf

from .base import (LabeledClipDataset, LabeledSliceDataset, UnlabeledClipDataset, UnlabeledSlabDataset,
                   VolumeDataset)
from .errors import DatasetError
from .registry import dataset_spec
from .sources import Sources


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

    def pseudo_labeled(self, run_path: str, label_volume, image_size: int, **kw):
        """The unlabeled volumes as pseudo-labeled slices, labeled once by ``label_volume(image) -> labels`` or read
        back from ``<run_path>/pseudo`` (:func:`dataset.pseudo.pseudo_label_dataset`, keywords passed on)."""
        from .pseudo import pseudo_label_dataset
        return pseudo_label_dataset(run_path, self.unlabeled.refs, label_volume, image_size, **kw)

    def summary(self) -> str:
        def n(d):
            """Volumes, and the training items they give, each with its unit (as ``python -m dataset.check``)."""
            if d is None:
                return "none"
            from .check import dataset_refs
            volumes = len(dataset_refs(d))
            unit = {"LabeledSliceDataset": "slices", "UnlabeledSlabDataset": "slabs"}.get(type(d).__name__)
            return f"{volumes} volume(s)" + (f" ({len(d)} {unit})" if unit else "")
        dropped = self.info.get("unlabeled_dropped") or []
        return (f"{self.dataset} at {self.root}: labeled {n(self.labeled)}, unlabeled {n(self.unlabeled)}, "
                f"val {n(self.val)}, test {n(self.test)}; classes {', '.join(self.class_names)}"
                + (f"; {len(dropped)} unlabeled volume(s) dropped: their patient is in the validation or test split "
                   f"(e.g. {os.path.basename(dropped[0])})" if dropped else ""))


def assemble(src: Sources, conf: DataConf, script: str, root: str, *, image_size: int, seed: int,
             unlabeled: bool, intensity: tuple, needed_by: str = "the method") -> Splits:
    """Turn volume references into the datasets the script needs (``unlabeled``: ``needed_by``, the method, needs
    unlabeled data)."""
    if script not in ("2d", "3d"):
        raise ValueError(f"script must be '2d' or '3d', got {script!r}")
    size = image_size
    class_names = tuple(src.class_names)
    if script == "2d":
        items = src.labeled_slices
        if items is None:
            items = [(r, z) for r in src.labeled_refs for z in range(r.num_slices())]
        labeled = LabeledSliceDataset(items, size, seed)
    else:
        labeled = LabeledClipDataset(src.labeled_refs, conf.video_length, size, seed,
                                     fg_oversample=conf.fg_oversample)
    unl_refs = src.unlabeled_refs or []
    unlabeled_ds, unl_missing = None, None
    if unl_refs:
        if script == "2d":
            unlabeled_ds = UnlabeledSlabDataset(unl_refs, conf.slab_len, size, seed)
        else:
            unlabeled_ds = UnlabeledClipDataset(unl_refs, conf.video_length, size, seed)
    else:
        unl_missing = src.unlabeled_missing or f"{root}: no unlabeled data (all training volumes are labeled)"
        if unlabeled:
            raise DatasetError(f"{unl_missing}; {needed_by} needs unlabeled data "
                               f"(lower -labeled_num, add unlabeled volumes, or use -method supervised)")
    val = VolumeDataset(src.val_refs, "validation")
    test = None if src.test_refs is None else VolumeDataset(src.test_refs, "test")
    names = lambda refs: [r.name for r in refs or []]  # noqa: E731
    case_names = {"labeled": names(src.labeled_refs), "unlabeled": names(unl_refs),
                  "val": names(src.val_refs), "test": names(src.test_refs),
                  "unlabeled_dropped": [os.path.basename(p) for p in src.info.get("unlabeled_dropped", [])]}
    clash = set(case_names["val"]) & set(case_names["test"])
    if clash:
        raise DatasetError(f"{root}: case {sorted(clash)[0]} is in both the validation and the test split")
    return Splits(labeled=labeled, unlabeled=unlabeled_ds, val=val, test=test, class_names=class_names,
                  num_classes=len(class_names), dataset=conf.dataset, root=root,
                  test_missing=src.test_missing, unlabeled_missing=unl_missing,
                  info={**src.info, "intensity": list(intensity)}, case_names=case_names)


def build_datasets(conf: DataConf, script: str, *, image_size: int, seed: int = 0, unlabeled: bool = True,
                   needed_by: str = "the method") -> Splits:
    """Build the datasets of ``conf.dataset`` (any registered dataset, :mod:`dataset.registry`) for ``script``
    ("2d"/"3d") at the model size ``image_size``; ``unlabeled``: the method (``needed_by``, as the error names it,
    e.g. "-method sss") needs unlabeled data. Raises :class:`DatasetError` with a one-line message on bad input."""
    spec = dataset_spec(conf.dataset)
    root = conf.data_path or spec.default_path(script)
    src = spec.sources(conf, root, script)
    return assemble(src, conf, script, root, image_size=image_size, seed=seed, unlabeled=unlabeled,
                    intensity=tuple(spec.intensity(conf, root, script)), needed_by=needed_by)
