"""The registry of datasets: ``-dataset`` name -> :class:`DatasetSpec` (its source function, preset, default path
and intensity rule). :func:`register_dataset` adds one (the built-in ``acdc``, ``bhsd``, ``custom`` and ``demo``
below; a user's own wherever it is defined); no other file branches on a dataset's name."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from .errors import DatasetError
from .sources import Sources

__all__ = ["DatasetSpec", "register_dataset", "dataset_spec", "dataset_names"]


@dataclass(frozen=True)
class DatasetSpec:
    """``sources(data, root, script) -> Sources``: the volume references of the root folder ``root`` for
    ``train_<script>.py`` (``data``: :class:`sam2_train.engine.config.DataConf`). ``intensity(data, root, script)
    -> tuple``: how its images are mapped to [0, 1] (recorded with every run, so ``predict.py`` maps new scans
    the same way): ``("minmax",)``, ``("window", lo, hi)`` (CT in HU), ``("unit",)``, ``("png_unit",)``.
    ``preset``: the flag defaults of the dataset, a block name of ``configs/presets.yaml`` or a dict of flag ->
    value (a pair is (2D, 3D)). ``default_path(script)``: the root when ``-data_path`` is not given.
    ``default_script``: what ``python -m dataset.check`` reads it as without ``-script``."""
    name: str
    sources: Callable[..., Sources]
    intensity: Callable[..., tuple]
    preset: str | dict
    default_path: Callable[[str], str]
    default_script: str = "2d"


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    _DATASETS[spec.name] = spec
    return spec


def dataset_names() -> tuple[str, ...]:
    return tuple(_DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    if name not in _DATASETS:
        raise DatasetError(f"-dataset {name}: unknown dataset (known: {', '.join(_DATASETS)})")
    return _DATASETS[name]


# ---------------------------------------------------------------------------------------------- built-in
def _acdc_sources(data, root, script):
    from .acdc import acdc_sources
    return acdc_sources(root, 3 if data.labeled_num is None else data.labeled_num, data.labeled_ratio)


def _bhsd_sources(data, root, script):
    from .bhsd import bhsd_sources
    return bhsd_sources(root, data.labeled_num, data.labeled_ratio, data.hu_window)


def _bhsd_intensity(data, root, script):
    from .bhsd import bhsd_intensity
    return bhsd_intensity(data.hu_window)


def _custom_sources(data, root, script):
    from .custom import custom_sources
    return custom_sources(root, data.labeled_num, data.labeled_ratio, data.hu_window, data.class_spec)


def _custom_intensity(data, root, script):
    from .custom import custom_intensity
    return custom_intensity(root, data.hu_window) if os.path.isdir(root) else ("minmax",)


def demo_kind(root: str, script: str) -> str:
    """The phantoms of a demo folder: ACDC-format for 2D, BHSD-format for 3D, unless the folder already holds
    the other kind."""
    if os.path.isfile(os.path.join(root, "train_slices.list")):
        return "acdc"
    if os.path.isdir(os.path.join(root, "label_192")):
        return "bhsd"
    return "acdc" if script == "2d" else "bhsd"


def _demo_sources(data, root, script):
    from .demo import ensure_demo
    kind = demo_kind(root, script)
    ensure_demo(root, kind)
    if kind == "acdc":
        from .acdc import acdc_sources
        return acdc_sources(root, 2 if data.labeled_num is None else data.labeled_num, data.labeled_ratio)
    return _bhsd_sources(data, root, script)


def _demo_intensity(data, root, script):
    return ("minmax",) if demo_kind(root, script) == "acdc" else _bhsd_intensity(data, root, script)


for _spec in (
        DatasetSpec("acdc", _acdc_sources, lambda data, root, script: ("minmax",), "acdc",
                    lambda script: os.path.join("data", "ACDC")),
        DatasetSpec("bhsd", _bhsd_sources, _bhsd_intensity, "bhsd", lambda script: os.path.join("data", "bhsd"),
                    default_script="3d"),
        DatasetSpec("custom", _custom_sources, _custom_intensity, "custom",
                    lambda script: os.path.join("data", "custom")),
        DatasetSpec("demo", _demo_sources, _demo_intensity, "demo",
                    lambda script: os.path.join("data", "demo_acdc" if script == "2d" else "demo_bhsd"))):
    register_dataset(_spec)
