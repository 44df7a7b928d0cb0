"""Datasets: ACDC, BHSD, custom folders, demo phantoms, augmentation.

Public API (see docs/data.md):

* :func:`build_datasets` (:class:`DataConf`, script, image_size=, seed=, unlabeled=) -> :class:`Splits`
* :mod:`dataset.registry`: ``-dataset`` name -> source function, preset, default path, intensity rule
  (:func:`register_dataset` adds one); sources return :class:`Sources`
* :class:`DatasetError`
* datasets: LabeledSliceDataset, UnlabeledSlabDataset, LabeledClipDataset, UnlabeledClipDataset, VolumeDataset
* augmentation: :mod:`dataset.transforms`; batch CutMix is :mod:`sam2_train.model.cutmix`
* demo data: :func:`dataset.demo.ensure_demo`, ``python -m dataset.demo OUT``
* ``python -m dataset.convert_acdc RAW_DIR OUT_DIR``
"""
from sam2_train.engine.config import DataConf

from .errors import DatasetError
from .base import LabeledClipDataset, LabeledSliceDataset, UnlabeledClipDataset, UnlabeledSlabDataset, VolumeDataset
from .build import Splits, build_datasets
from .registry import DatasetSpec, dataset_spec, register_dataset
from .sources import Sources

__all__ = ["DatasetError", "DataConf", "DatasetSpec", "Sources", "Splits", "build_datasets", "dataset_spec",
           "register_dataset", "LabeledSliceDataset", "UnlabeledSlabDataset", "LabeledClipDataset",
           "UnlabeledClipDataset", "VolumeDataset"]
