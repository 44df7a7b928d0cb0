"""Checkpoints of this project: atomic save, safe (``weights_only``) load with clear errors, RNG state
capture/restore, config compatibility checks.

Format (``CHECKPOINT_VERSION`` = 1), a dict holding only tensors and plain containers/primitives so that
``torch.load(path, weights_only=True)`` reads it::

    {"model": state_dict,              # like an official SAM-2 checkpoint ({"model": state_dict})
     "config": dict,                   # TrainConfig.to_dict() (its "format" 2), read back by TrainConfig.from_dict
     "extra": dict | None,             # the method's own state (Method.extra_state, e.g. a fine-tuned SAM-2 guide)
     "optimizer": dict | None, "scheduler": dict | None, "ema": dict | None,
     "rng": {"per_rank": [rng_state_rank0, ...]} | None,
     "iteration": int,                 # optimiser steps done
     "epoch": int,
     "best": {...},                    # e.g. {"metric": "dice", "value": 0.87, "iteration": 1200}
     "version": 1}

An rng state is ``{"python": [version, [625 ints], gauss_next], "numpy": [name, int64 tensor, pos,
has_gauss, cached_gaussian], "torch": uint8 tensor, "cuda": [uint8 tensor per device]}``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import os
import re
import pickle
import random
import secrets
import shutil
import warnings
import zipfile
from typing import Any, Optional

import numpy as np
import torch

from sam2_train.engine.distributed import get_rank, get_world_size, is_dist, unwrap_model
from sam2_train.engine.errors import UserError

__all__ = [
    "CHECKPOINT_VERSION", "CheckpointError", "CheckpointNotFoundError", "ConfigMismatchError",
    "save_checkpoint", "load_checkpoint", "read_torch_file", "validate_checkpoint", "to_plain", "capture_rng_state",
    "gather_rng_states", "restore_rng_state", "model_state_dict", "load_model_state", "make_checkpoint",
    "restore_training_state", "saved_config", "check_pretrain_config", "check_resume_config",
    "unique_tmp_path", "copy_file_atomic", "saved_world_size", "world_size_change_message", "resume_record",
    "CheckpointWriteError", "remove_stale_tmp_files", "weights_only", "WEIGHTS_ONLY_KEYS",
]

CHECKPOINT_VERSION = 1

class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be used (corrupt, truncated, not ours, wrong version)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    pass


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, say); the previous file of that name is intact. The
    training scripts report it in one line and exit 1."""


class ConfigMismatchError(UserError, ValueError):
    """The settings of this run differ from a checkpoint's in ways it cannot take (architecture; on resume, what
    the run computes)."""


# ----------------------------------------------------------------------------------------------
# plain data
# ----------------------------------------------------------------------------------------------
_PRIMITIVES = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device, torch.Size)


def to_plain(obj: Any, _where: str = "state") -> Any:
    """Convert ``obj`` into what ``torch.load(weights_only=True)`` accepts: tensors, primitives, and
    dict/list/tuple of them. Numpy scalars become Python numbers, numpy arrays tensors, paths strings,
    ``argparse.Namespace`` dicts. Anything else raises ``TypeError`` naming where it is."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, _PRIMITIVES):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, type(None))):
                raise TypeError(f"{_where}: dict key {k!r} of type {type(k).__name__} is not allowed in a checkpoint")
            out[k] = to_plain(v, f"{_where}[{k!r}]")
        return out
    if isinstance(obj, list):
        return [to_plain(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(to_plain(v, f"{_where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, (set, frozenset)):
        return sorted(to_plain(v, _where) for v in obj)
    raise TypeError(f"{_where}: object of type {type(obj).__module__}.{type(obj).__name__} cannot be stored in a "
                    "checkpoint loadable with weights_only=True (store tensors, numbers, strings, lists, dicts)")


# ----------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def unique_tmp_path(path: str | os.PathLike) -> str:
    """A temporary file name beside ``path`` that no other process or thread uses:
    ``<path>.<pid>.<random hex>.tmp``. Open it with mode ``"x"`` (exclusive create)."""
    return f"{os.fspath(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


_TMP_NAME = re.compile(r"^.+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:              # another user's process
        return True
    return True


def remove_stale_tmp_files(folder: str | os.PathLike) -> list[str]:
    """Remove the :func:`unique_tmp_path` files under ``folder`` (recursively) whose writing process is gone, e.g.
    a ``last.pt.<pid>.<hex>.tmp`` left by ``kill -9`` during a save. Returns the removed paths."""
    removed = []
    for here, _, files in os.walk(os.fspath(folder)):
        for name in files:
            m = _TMP_NAME.match(name)
            if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(here, name))
                    removed.append(os.path.join(here, name))
    return sorted(removed)


def _write_failure(path: str, folder: str, error: BaseException) -> str:
    """One line for a checkpoint that could not be written: a full disk by its name (torch's zip writer reports
    it as ``RuntimeError: [enforce fail at inline_container.cc] . unexpected pos``), and the file that survives."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        free is not None and free < (64 << 20))
    what = "no space left on device" if full else "cannot write it ({}: {})".format(
        type(error).__name__, " ".join(str(error).split())[:200])
    good = f"the last good checkpoint is {path}" if os.path.isfile(path) else "no earlier checkpoint of that name"
    return f"{what} while writing {path}; {good}"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs):
    """``with atomic_write(path) as f``: write to a unique temporary file beside ``path`` (:func:`unique_tmp_path`);
    on success flush, fsync and ``os.replace`` it onto ``path``, so readers see the old file or the complete new
    one; on any failure remove it and leave ``path`` untouched."""
    path = os.fspath(path)
    tmp = unique_tmp_path(path)
    try:
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def copy_file_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Copy ``src`` to ``dst`` atomically (:func:`atomic_write`). Returns ``dst``."""
    with open(src, "rb") as fin, atomic_write(dst) as fout:
        shutil.copyfileobj(fin, fout, 16 << 20)
    _fsync_dir(os.path.dirname(os.path.abspath(dst)))
    return os.fspath(dst)


def save_checkpoint(path: str | os.PathLike, state: dict) -> str:
    """Write ``state`` to ``path`` atomically (:func:`atomic_write`, then the folder is fsynced). ``state`` is
    converted by :func:`to_plain` first (non-plain objects raise ``TypeError`` before anything is written).
    Call it on the main rank only. Returns the path."""
    path = os.fspath(path)
    state = to_plain(state)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:       # the old file is intact: atomic_write removed the partial one
        raise CheckpointWriteError(_write_failure(path, folder, e)) from None
    _fsync_dir(folder)
    return path


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu", *,
                    weights_only: bool = True, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming ``what`` (e.g. ``"checkpoint"``,
    ``"SAM-2 checkpoint (-sam_ckpt)"``), the file and what is wrong: :class:`CheckpointNotFoundError` when it is
    missing, :class:`CheckpointError` for a folder, an empty (0-byte) file, a truncated/corrupt file (with the
    unpickler's reason) or objects ``weights_only`` refuses. Shared by
    :func:`load_checkpoint` (``-resume``, ``-pretrain``, ``-ckpt``) and the SAM-2 ``-sam_ckpt`` loader.
    ``mmap``: map the tensors instead of reading them (cheap validation of a large file; a file in torch's
    legacy, non-zip format is read in full)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{what} path is a directory, not a file: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{what} {path} is empty: empty file (0 bytes); was its write or download "
                              "interrupted?")
    if problem := _not_torch_file(path):
        raise CheckpointError(f"{what} {path} is not a PyTorch checkpoint ({size} bytes, {problem}); expected a "
                              "file written by torch.save, such as an official SAM-2 .pt")
    try:
        try:
            return torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
        except RuntimeError as e:
            if not (mmap and "mmap can only be used" in str(e)):
                raise
            return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        text = str(e)
        # torch's "Weights only load failed ..." preamble says nothing about the file: keep the unpickler's reason
        reason = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else text
        msg = next((ln.strip() for ln in reason.splitlines() if ln.strip()), type(e).__name__)
        if "Unsupported global" in text:
            raise CheckpointError(f"{what} {path} holds objects that torch.load(weights_only=True) refuses "
                                  f"({msg}); it was not written by this project or by SAM-2. Load it with "
                                  "weights_only=False only if you trust its source") from e
        raise CheckpointError(f"{what} {path} is corrupt or truncated ({size} bytes): {msg}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError,
            AttributeError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else "no reason given"
        raise CheckpointError(f"{what} {path} is corrupt or truncated ({size} bytes), "
                              f"torch.load failed: {type(e).__name__}: {msg}") from e


_ZIP_MAGIC = b"PK\x03\x04"                      # torch.save's format since 1.6
_PICKLE_PROTOCOLS = {bytes([0x80, n]) for n in range(2, 6)}   # the legacy format: a pickle stream


def _not_torch_file(path: str) -> str | None:
    """Why the file cannot be one torch.save wrote (None when its first bytes fit torch's zip or pickle format)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] == _ZIP_MAGIC or head[:2] in _PICKLE_PROTOCOLS:
        return None
    try:
        head.decode("utf-8")
        return "it is a text file"
    except UnicodeDecodeError:
        return f"it starts with bytes {head[:4].hex(' ')}, neither a zip archive nor a pickle"


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, ours: bool = True,
                    weights_only: bool = True, mmap: bool = False) -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)`` (:func:`read_torch_file`; ``mmap`` maps the
    tensors instead of reading them).

    Raises :class:`CheckpointNotFoundError` when the file is missing, :class:`CheckpointError` naming the
    file when it is empty, truncated/corrupt (e.g. half-written), holds objects ``weights_only`` refuses, is not a
    dict with ``"model"``, or (``ours=True``) is not a checkpoint of this project (no ``version``: e.g. an
    official SAM-2 file, which belongs to ``-sam_ckpt``) or has a newer version."""
    path = os.fspath(path)
    state = read_torch_file(path, "checkpoint", map_location, weights_only=weights_only, mmap=mmap)
    if not isinstance(state, dict) or "model" not in state:
        kind = f"dict with keys {sorted(map(str, state))[:8]}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a model checkpoint: expected a dict with a 'model' state dict, "
                              f"got a {kind}")
    if ours:
        version = state.get("version")
        if version is None:
            raise CheckpointError(f"{path} is not a checkpoint of this project (no 'version'; keys "
                                  f"{sorted(map(str, state))[:8]}); an official SAM-2 checkpoint goes to -sam_ckpt")
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise CheckpointError(f"{path} has checkpoint version {version!r}; this code reads versions "
                                  f"<= {CHECKPOINT_VERSION}")
    return state


# ----------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """This process's RNG states (python ``random``, numpy global, torch CPU, every CUDA device) as
    tensors/lists/numbers only."""
    v, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [int(v), [int(x) for x in internal], gauss],
        "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def gather_rng_states() -> dict:
    """``{"per_rank": [state of rank 0, rank 1, ...]}`` (a collective under DDP: every rank calls it; the
    main rank then saves the result)."""
    local = capture_rng_state()
    if not is_dist():
        return {"per_rank": [local]}
    out = [None] * get_world_size()
    torch.distributed.all_gather_object(out, local)
    return {"per_rank": out}


def restore_rng_state(state: dict, rank: Optional[int] = None) -> bool:
    """Restore a state from :func:`capture_rng_state` or :func:`gather_rng_states` (then the entry of
    ``rank``, default this process's rank). Returns False (and warns, leaving the RNGs as seeded) when the
    checkpoint has no state for this rank, e.g. after changing the number of processes."""
    if "per_rank" in state:
        rank = get_rank() if rank is None else rank
        states = state["per_rank"]
        if rank >= len(states) or (is_dist() and len(states) != get_world_size()):
            warnings.warn(f"the checkpoint holds RNG states of {len(states)} process(es), this run has "
                          f"{get_world_size()}: RNGs keep their fresh seeds (resumed randomness differs)")
            return False
        state = states[rank]
    v, internal, gauss = state["python"]
    random.setstate((int(v), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if len(cuda) != n:
            warnings.warn(f"the checkpoint holds CUDA RNG states of {len(cuda)} device(s), {n} are visible: "
                          "restoring the common ones")
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), i)
    return True


# ----------------------------------------------------------------------------------------------
# model / training state
# ----------------------------------------------------------------------------------------------
def model_state_dict(model: torch.nn.Module) -> dict:
    """The model's state dict without DDP ``module.`` / ``torch.compile`` ``_orig_mod.`` prefixes (so it
    loads into a plain model, like an official SAM-2 checkpoint)."""
    sd = unwrap_model(model).state_dict()
    return {k.replace("_orig_mod.", ""): v for k, v in sd.items()}


def load_model_state(model: torch.nn.Module, state_dict: dict, strict: bool = True, what: str = "the checkpoint"):
    """Load a (prefix-free) state dict into ``model``, which may be DDP-wrapped or hold compiled
    submodules. ``strict``: a state dict that does not fit raises :class:`CheckpointMismatchError` naming
    ``what`` and the first missing / unexpected / mis-shaped keys (:func:`sam2_train.model.build.load_state_strict`)."""
    from sam2_train.model.build import load_state_strict
    target = unwrap_model(model)
    own = target.state_dict().keys()
    if any("_orig_mod." in k for k in own):
        rename = {k.replace("_orig_mod.", ""): k for k in own}
        state_dict = {rename.get(k, k): v for k, v in state_dict.items()}
    if strict:
        return load_state_strict(target, state_dict, what=what, config=type(target).__name__)
    return target.load_state_dict(state_dict, strict=False)


def make_checkpoint(model: torch.nn.Module, config: Any, *, optimizer=None, scheduler=None, ema=None,
                    rng: Optional[dict] = None, iteration: int = 0, epoch: int = 0,
                    best: Optional[dict] = None, **extra) -> dict:
    """Assemble the checkpoint dict (see the module docstring). ``config``: ``TrainConfig.to_dict()``. ``rng``: the
    result of :func:`gather_rng_states` (collective, so the caller gathers on every rank first); defaults
    to this process's state. ``extra`` keys are stored as well (they must be plain)."""
    state = {
        "model": model_state_dict(model),
        "config": to_plain(dict(config), "config"),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": rng if rng is not None else {"per_rank": [capture_rng_state()]},
        "iteration": int(iteration),
        "epoch": int(epoch),
        "best": dict(best or {}),
        "version": CHECKPOINT_VERSION,
    }
    state.update(extra)
    return state


def restore_training_state(state: dict, model: torch.nn.Module, *, optimizer=None, scheduler=None, ema=None,
                           restore_rng: bool = True) -> dict:
    """Load model (strict), optimiser, scheduler, EMA and RNG states from a checkpoint dict for resuming.
    Returns ``{"iteration", "epoch", "best"}``. A missing optimiser/scheduler/EMA state for an object that
    was passed raises :class:`CheckpointError`."""
    load_model_state(model, state["model"], strict=True)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("ema", ema)):
        if obj is None:
            continue
        if state.get(name) is None:
            raise CheckpointError(f"the checkpoint has no {name} state to resume from")
        obj.load_state_dict(state[name])
    if restore_rng and state.get("rng"):
        restore_rng_state(state["rng"])
    return {"iteration": int(state.get("iteration", 0)), "epoch": int(state.get("epoch", 0)),
            "best": dict(state.get("best") or {})}


# ----------------------------------------------------------------------------------------------
# config compatibility
# ----------------------------------------------------------------------------------------------
def saved_config(state: dict, source: str):
    """The :class:`~sam2_train.engine.config.TrainConfig` a checkpoint was written with; its SAM-2 config must be
    one this checkout trusts (:func:`sam2_train.engine.trusted_config.trusted_sam_config`)."""
    from sam2_train.engine.config import TrainConfig
    from sam2_train.engine.trusted_config import trusted_sam_config
    config = TrainConfig.from_dict(state.get("config"), source)
    return config.replace(model={"sam_config": trusted_sam_config(config.model.sam_config, source)})


#: what a weights-only checkpoint (``best.pt``) keeps: enough to evaluate, predict or ``-pretrain`` from
WEIGHTS_ONLY_KEYS = ("model", "config", "ema", "extra", "iteration", "epoch", "best", "version")


def weights_only(state: dict) -> dict:
    """The checkpoint ``state`` without what only a resume needs (optimiser, scheduler, RNG and guard states)."""
    return {k: state[k] for k in WEIGHTS_ONLY_KEYS if k in state}


def validate_checkpoint(path: str | os.PathLike, resume: bool = False) -> None:
    """Open a checkpoint the way a run that resumes (``-resume``, ``resume=True``) or starts (``-pretrain``) from it
    will, before the data is read and checked: :func:`load_checkpoint` with the tensors memory-mapped (about a
    second, however large the file) and its config read back (:func:`saved_config`). A wrong path, an empty,
    truncated or foreign file, a config this code cannot read, or (to resume) a weights-only checkpoint raises
    the error the run would otherwise give only after the data check."""
    path = os.fspath(path)
    state = load_checkpoint(path, mmap=True)
    saved_config(state, path)
    if resume and state.get("optimizer") is None:
        last = os.path.join(os.path.dirname(os.path.abspath(path)), "last.pt")
        raise CheckpointError(f"-resume {path}: this checkpoint holds weights only (model and EMA, no optimiser "
                              f"state); resume from {last}, or start a new run from these weights with -pretrain")


def _listed(diffs) -> str:
    return "; ".join(f"{flag or field}: {a!r} -> {b!r}" for field, flag, a, b in diffs)


def check_pretrain_config(saved, current, *, source: str = "the checkpoint") -> None:
    """:class:`ConfigMismatchError` naming every architecture setting (kind ``arch``) in which this run differs
    from the checkpoint it initialises from or evaluates."""
    diffs = saved.differences(current, kinds=("arch",))
    if diffs:
        raise ConfigMismatchError(f"settings incompatible with {source} ({source} -> this run): {_listed(diffs)}. "
                                  "Use the checkpoint's values (or drop these flags to take them from it)")


def check_resume_config(saved, current, *, force: bool = False, source: str = "the checkpoint") -> dict:
    """Compare the settings that change a run (kinds ``arch`` and ``run``) of a checkpoint's config and this
    run's. An architecture change raises :class:`ConfigMismatchError`; any other change too, one line listing each
    changed flag as ``old -> new``, unless ``force``. Returns ``{flag: [old, new]}`` for the changes accepted."""
    check_pretrain_config(saved, current, source=source)
    diffs = saved.differences(current, kinds=("run",))
    if diffs and not force:
        raise ConfigMismatchError(f"-resume: settings changed since {source} was saved: {_listed(diffs)}; resume "
                                  "with the checkpoint's values, or pass -resume_force 1 to accept the change")
    return {flag or field: [to_plain(a), to_plain(b)] for field, flag, a, b in diffs}


def saved_world_size(state: dict) -> Optional[int]:
    """The number of processes that wrote the checkpoint: its ``world_size`` entry, else the number of
    per-rank RNG states it holds; None when it has neither."""
    if isinstance(state.get("world_size"), int):
        return state["world_size"]
    rng = state.get("rng") or {}
    per_rank = rng.get("per_rank") if isinstance(rng, dict) else None
    return len(per_rank) if per_rank else None


def world_size_change_message(saved: Optional[int], current: int, *, batch: Optional[int] = None,
                              source: str = "the checkpoint") -> Optional[str]:
    """A one-line warning saying what changes when a checkpoint saved by ``saved`` processes is resumed by
    ``current`` ones (None when they agree or ``saved`` is unknown). ``batch``: the per-process batch."""
    if saved is None or saved == current:
        return None
    glob = (f"; the global batch becomes {batch} x {current} = {batch * current} instead of "
            f"{batch} x {saved} = {batch * saved}") if batch else ""
    return (f"{source} was saved by {saved} process(es), this run has {current}: every process now reads "
            f"another shard of the data (each epoch's permutation is split {current} ways instead of {saved}){glob}, "
            "and the random streams differ (the per-rank RNG states saved no longer map one to one onto the "
            "processes), so the run does not continue as the interrupted one would have")


def resume_record(state: dict, source: str, changed: dict, world_size: int) -> dict:
    """The ``resumed`` entry for ``config.json``: when, from which checkpoint and iteration, the flags
    accepted with a change (``{flag: [old, new]}``) and the world sizes (saved, now)."""
    return {"time": datetime.datetime.now().isoformat(timespec="seconds"),
            "checkpoint": os.path.abspath(source), "iteration": int(state.get("iteration", 0)),
            "changed": dict(changed), "world_size": [saved_world_size(state), int(world_size)]}
