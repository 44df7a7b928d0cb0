"""Which SAM-2 config a checkpoint may name.

A checkpoint's ``config`` records the ``-sam_config`` it was trained with, and ``evaluate.py`` / ``-pretrain``
build the model from it. Hydra instantiates every ``_target_`` of a yaml file, so a checkpoint naming an
arbitrary yaml path would run code chosen by whoever wrote the checkpoint. Only these names are accepted:

* the built-in ``sam2_hiera_{t,s,b+,l}`` / ``sam2.1_hiera_{t,s,b+,l}`` (or their hydra names in the ``sam2``
  package, e.g. ``configs/sam2.1/sam2.1_hiera_s.yaml``);
* a config shipped with this repository in ``sam2_train/configs/`` (e.g. the tests' ``sam2_hiera_test.yaml``),
  matched by file name and always loaded from this checkout, never from the path the checkpoint names.

A yaml of your own is passed explicitly on the command line (``evaluate.py -sam_config PATH``).
"""
from __future__ import annotations

import os

from sam2_train.model.build import SAM_CONFIG_NAMES

from sam2_train.engine.checkpoint import CheckpointError

SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> dict[str, str]:
    """File name -> absolute path of the yaml configs in ``sam2_train/configs/``."""
    if not os.path.isdir(SHIPPED_DIR):
        return {}
    return {f: os.path.join(SHIPPED_DIR, f) for f in sorted(os.listdir(SHIPPED_DIR)) if f.endswith((".yaml", ".yml"))}


def trusted_sam_config(value, source: str) -> str:
    """The ``-sam_config`` to build from, given the value a checkpoint's config names.

    Returns a built-in name unchanged, or the path of the shipped config with that file name; raises
    :class:`CheckpointError` (one line naming ``source``) for anything else."""
    from sam2_train.model.build import HYDRA_CONFIG_NAMES

    if isinstance(value, str):
        v = value.strip()
        stem = v[:-5] if v.endswith(".yaml") and os.sep not in v else v
        if stem in SAM_CONFIG_NAMES:
            return stem
        if v in HYDRA_CONFIG_NAMES.values():
            return v
        shipped = shipped_configs()
        if os.path.basename(v) in shipped:
            return shipped[os.path.basename(v)]
    raise CheckpointError(
        f"{source} names SAM-2 config {value!r}, which is not a built-in config: a checkpoint may only name one of "
        f"{', '.join(SAM_CONFIG_NAMES)} or a config shipped in sam2_train/configs "
        f"({', '.join(shipped_configs()) or 'none'}); to use your own yaml, pass it on the command line")
