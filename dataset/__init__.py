"""Datasets: ACDC, BHSD, custom folders, demo phantoms, augmentation.

Public API (see docs/data.md):

* :func:`build_datasets` (:class:`DataConf`, script) -> :class:`Splits`
* :class:`DatasetError`
* datasets: LabeledSliceDataset, UnlabeledSlabDataset, LabeledClipDataset, UnlabeledClipDataset,
  VolumeDataset, :func:`collate_volumes`
* augmentation: :mod:`dataset.transforms` (weak_geometric, strong_photometric); batch CutMix is
  :mod:`sam2_train.model.cutmix`
* demo data: :func:`dataset.demo.ensure_demo`, ``python -m dataset.demo OUT``
* ``python -m dataset.convert_acdc RAW_DIR OUT_DIR``
"""
from .errors import DatasetError
from .base import (LabeledClipDataset, LabeledSliceDataset, UnlabeledClipDataset, UnlabeledSlabDataset,
                   VolumeDataset, collate_volumes, item_generators)
from .build import DataConf, Splits, build_datasets
from .transforms import strong_photometric, weak_geometric


def ensure_demo(root: str, kind: str = "both", seed: int = 0):
    from .demo import ensure_demo as _ensure
    return _ensure(root, kind, seed)


__all__ = ["DatasetError", "DataConf", "Splits", "build_datasets", "ensure_demo", "collate_volumes", "item_generators",
           "LabeledSliceDataset", "UnlabeledSlabDataset", "LabeledClipDataset", "UnlabeledClipDataset",
           "VolumeDataset", "strong_photometric", "weak_geometric"]
