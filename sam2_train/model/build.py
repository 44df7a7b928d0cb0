"""Build SAM-2 (``sam2.modeling.sam2_base.SAM2Base``) from a config name or yaml path plus a checkpoint.

Public API
----------
- :func:`resolve_sam_config` -- ``-sam_config`` value -> what hydra can compose.
- :func:`build_sam2_base` -- config + checkpoint + image size -> fp32 ``SAM2Base`` in train mode.
- :func:`load_state_strict` -- strict ``load_state_dict`` with a readable :class:`CheckpointMismatchError`.
- :data:`CKPT_FILES` -- built-in config name -> official checkpoint file name .

All model code comes from the ``sam2`` package (``sam2.build_sam.build_sam2``); nothing is vendored.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from sam2_train.engine.errors import UserError


logger = logging.getLogger(__name__)

#: built-in ``-sam_config`` names: SAM 2.0 and SAM 2.1, Hiera tiny / small / base+ / large
SAM_CONFIG_NAMES = (
    "sam2_hiera_t", "sam2_hiera_s", "sam2_hiera_b+", "sam2_hiera_l",
    "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l",
)

#: built-in ``-sam_config`` name -> official checkpoint file (``checkpoints/<file>``)
CKPT_FILES: Mapping[str, str] = {
    "sam2_hiera_t": "sam2_hiera_tiny.pt", "sam2_hiera_s": "sam2_hiera_small.pt",
    "sam2_hiera_b+": "sam2_hiera_base_plus.pt", "sam2_hiera_l": "sam2_hiera_large.pt",
    "sam2.1_hiera_t": "sam2.1_hiera_tiny.pt", "sam2.1_hiera_s": "sam2.1_hiera_small.pt",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus.pt", "sam2.1_hiera_l": "sam2.1_hiera_large.pt",
}

#: built-in ``-sam_config`` name -> hydra config name inside the ``sam2`` package
HYDRA_CONFIG_NAMES: Mapping[str, str] = {
    name: (f"configs/sam2.1/{name}.yaml" if name.startswith("sam2.1_") else f"configs/sam2/{name}.yaml")
    for name in SAM_CONFIG_NAMES
}

DOWNLOAD_CMD = "bash checkpoints/download_ckpts.sh"


class CheckpointMismatchError(UserError, RuntimeError):
    """A state dict does not fit the model built from a config (missing/unexpected keys or shapes)."""


def _config_ckpt_table() -> str:
    return "; ".join(f"{name} -> checkpoints/{fname}" for name, fname in CKPT_FILES.items())


#: ``-sam_ckpt`` value of a build whose weights are loaded next from a run's checkpoint (resume, evaluate.py,
#: predict.py): nothing is read and no random-initialisation warning is given
WEIGHTS_FROM_CHECKPOINT = "<weights from a training checkpoint>"


def resolve_sam_config(name_or_path: str) -> str:
    """Map a ``-sam_config`` value to what :func:`build_sam2_base` composes.

    Accepts ``sam2_hiera_{t,s,b+,l}`` (SAM 2.0), ``sam2.1_hiera_{t,s,b+,l}`` (SAM 2.1) -> the hydra name
    in the ``sam2`` package (e.g. ``configs/sam2.1/sam2.1_hiera_s.yaml``); the hydra names themselves; and a
    path (absolute or relative to the working directory) to an existing ``.yaml``/``.yml`` file -> its
    absolute path. Anything else raises ``ValueError`` naming the allowed values.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"-sam_config must be a non-empty string, got {name_or_path!r}")
    value = name_or_path.strip()
    if value in HYDRA_CONFIG_NAMES:
        return HYDRA_CONFIG_NAMES[value]
    if value in HYDRA_CONFIG_NAMES.values():
        return value
    stem = value[:-5] if value.endswith(".yaml") else value
    if stem in HYDRA_CONFIG_NAMES and os.path.sep not in value:  # e.g. "sam2_hiera_s.yaml"
        return HYDRA_CONFIG_NAMES[stem]
    if value.endswith((".yaml", ".yml")):
        path = os.path.abspath(os.path.expanduser(value))
        if os.path.isfile(path):
            return path
        raise ValueError(f"-sam_config: yaml file not found: {value!r} (resolved to {path})")
    raise ValueError(
        f"unknown -sam_config {value!r}; allowed: {', '.join(SAM_CONFIG_NAMES)}, or a path to a .yaml file")


def _is_yaml_path(resolved: str) -> bool:
    return os.path.isabs(resolved) and resolved.endswith((".yaml", ".yml"))


@contextlib.contextmanager
def _hydra_search_path(config_dir: str | None) -> Iterator[None]:
    """Make hydra find the ``sam2`` package configs (``config_dir=None``) or the yaml files in ``config_dir``.

    Hydra keeps one process-wide ``GlobalHydra``; ``import sam2`` initialises it for its own package. We
    back it up, install the search path we need, and restore the backup afterwards, so repeated builds (and
    other code relying on sam2's initialisation) are unaffected.
    """
    from hydra import initialize_config_dir, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        if config_dir is None:
            ctx = initialize_config_module("sam2", version_base="1.2")
        else:
            ctx = initialize_config_dir(config_dir=config_dir, version_base="1.2")
        with ctx:
            yield
    finally:
        restore_gh_from_backup(backup)


def image_size_overrides(image_size: int) -> list[str]:
    """Hydra overrides setting the model input size and the RoPE tables of memory attention to match."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32 (SAM-2's Hiera needs it), got {image_size!r}")
    f = image_size // 16
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{f},{f}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{f},{f}]",
    ]


def _short(keys: Sequence[str], n: int = 5) -> str:
    keys = list(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_state_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str, config: str) -> None:
    """Strictly load ``state_dict`` into ``module``; raise :class:`CheckpointMismatchError` if it does not fit.

    The message names ``what`` (e.g. the checkpoint path), ``config`` and the first few missing keys,
    unexpected keys and shape mismatches (never a raw torch traceback).
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatchError(
            f"{what}: expected a state dict (mapping of name -> tensor) for config {config!r}, "
            f"got {type(state_dict).__name__}")
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_short(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {_short(shapes, 3)}")
        raise CheckpointMismatchError(
            f"{what} does not fit the model built from config {config!r}: " + "; ".join(parts)
            + ". Use the checkpoint that matches the config (SAM 2.0 configs sam2_hiera_* need sam2_hiera_*.pt, "
              "SAM 2.1 configs sam2.1_hiera_* need sam2.1_hiera_*.pt; see checkpoints/README.md).")
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # e.g. dtype problems; keep the message readable
        raise CheckpointMismatchError(f"{what} could not be loaded into config {config!r}: {e}") from None


def _missing_ckpt_message(path: str, config: str) -> str:
    expected = CKPT_FILES.get(config)
    hint = (f"config {config!r} needs checkpoints/{expected}" if expected
            else f"the checkpoint must match config {config!r}")
    return (f"SAM-2 checkpoint not found: {path!r}. Download the official checkpoints with "
            f"`{DOWNLOAD_CMD}` (or `{DOWNLOAD_CMD} <file>` for one file); {hint}. "
            f"Files per config: {_config_ckpt_table()}. Use -sam_ckpt none for a random init.")


def load_checkpoint_file(path: str, config: str) -> dict:
    """Read an official-format checkpoint ``{"model": state_dict, ...}`` (``weights_only=True``) -> state dict.

    A missing file names the download command; an empty, truncated or unreadable one raises the one-line
    :class:`~sam2_train.engine.checkpoint.CheckpointError` of
    :func:`~sam2_train.engine.checkpoint.read_torch_file` (the same messages as ``-resume``)."""
    from sam2_train.engine.checkpoint import read_torch_file
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing_ckpt_message(path, config))
    obj = read_torch_file(path, "SAM-2 checkpoint (-sam_ckpt)")
    run = obj.get("config", {}).get("run", {}) if isinstance(obj, Mapping) and isinstance(obj.get("config"), Mapping) \
        else {}
    if "script" in run:                                      # one of ours: a training run's checkpoint
        script = f"train_{run['script']}.py"
        raise CheckpointMismatchError(
            f"-sam_ckpt {path} is a {script} checkpoint, not SAM-2's weights: use -pretrain {path} to start a run from "
            f"its weights, -resume {path} to continue that run, or evaluate.py / predict.py -ckpt {path}")
    if not isinstance(obj, Mapping) or "model" not in obj:
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointMismatchError(
            f"checkpoint {path!r} is not in the official form {{'model': state_dict}} (found {keys}); "
            f"config {config!r}")
    return obj["model"]


def build_sam2_base(config: str, ckpt: str | None, image_size: int, device: str | torch.device = "cpu",
                    hydra_overrides_extra: Sequence[str] = ()):
    """Build a fp32 ``SAM2Base`` in train mode for ``image_size`` (a multiple of 32).

    Args:
        config: a ``-sam_config`` value (see :func:`resolve_sam_config`).
        ckpt: official-format checkpoint path, or ``None``/``"none"`` for a random init (warns loudly).
        image_size: model input size S; sets ``model.image_size`` and memory-attention RoPE ``feat_sizes``
            to S/16.
        device: where to put the model.
        hydra_overrides_extra: further hydra overrides, e.g. ``["++model.max_cond_frames_in_attn=16"]``.

    Raises:
        ValueError: unknown config or bad image size.
        FileNotFoundError: missing checkpoint file (message: path, download command, file per config).
        CheckpointError: an empty, truncated or unreadable checkpoint file (:func:`load_checkpoint_file`).
        CheckpointMismatchError: checkpoint does not fit the config.
    """
    from sam2.build_sam import build_sam2

    overrides = image_size_overrides(image_size) + list(hydra_overrides_extra)
    resolved = resolve_sam_config(config)
    later = ckpt == WEIGHTS_FROM_CHECKPOINT                 # weights come next from one of our checkpoints
    random_init = later or ckpt is None or str(ckpt).strip().lower() == "none"
    if not random_init and not os.path.isfile(ckpt):
        raise FileNotFoundError(_missing_ckpt_message(str(ckpt), config))

    if _is_yaml_path(resolved):
        search_dir, name = os.path.dirname(resolved), os.path.splitext(os.path.basename(resolved))[0]
    else:
        search_dir, name = None, resolved
    with _hydra_search_path(search_dir):
        # ckpt_path=None: we load ourselves to get strict checks with readable errors.
        model = build_sam2(name, ckpt_path=None, device="cpu", mode="train",
                           hydra_overrides_extra=overrides, apply_postprocessing=False)
    model = model.float()
    if random_init:
        if not later:   # said once (a warning, not also a log record)
            warnings.warn(f"SAM-2 ({config}) is RANDOMLY INITIALISED (-sam_ckpt none): results are meaningless "
                          f"without pretrained weights; use only for tests/demo. Download weights with "
                          f"`{DOWNLOAD_CMD}`.", stacklevel=2)
    else:
        state = load_checkpoint_file(str(ckpt), config)
        load_state_strict(model, state, what=f"checkpoint {str(ckpt)!r}", config=config)
        logger.info("loaded SAM-2 checkpoint %s into config %s", ckpt, config)
    model.train()
    return model.to(device)
