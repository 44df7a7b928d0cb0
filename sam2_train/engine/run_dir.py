"""The run directory and its logs.

``RunDir.create(log_dir, exp_name, config)`` makes ``<log_dir>/<exp_name>_<YYYYmmdd-HHMMSS>/`` with
``config.json`` (the full resolved args), ``checkpoints/``, ``vis/``, TensorBoard event files (in the run
directory itself), ``metrics.csv`` (one row per validation), ``summary.json`` and ``train.log`` (a copy of
the console messages). ``RunDir.open(path)`` re-opens it to resume (appending). While a run uses the
directory it holds ``run.lock`` (an ``flock`` on a file holding its pid and host), so a second run or resume
on the same directory stops with a clear message; a lock left by a process that died is taken over. On
non-main ranks every method is a no-op and ``path`` is ``None``.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import json
import math
import os
import socket
import tempfile
from typing import Any, Optional

import numpy as np
import torch

from sam2_train.engine.checkpoint import atomic_write
from sam2_train.engine.distributed import is_main_process
from sam2_train.engine.errors import UserError

__all__ = ["RunDir", "RunLockedError", "RunLock", "console", "write_json_atomic", "make_unique_dir",
           "NotWritableError", "check_writable", "run_path_of"]


def console(msg: str, all_ranks: bool = False) -> None:
    """Print a line without breaking tqdm progress bars (main rank only unless ``all_ranks``)."""
    if not all_ranks and not is_main_process():
        return
    try:
        from tqdm import tqdm
        tqdm.write(str(msg))
    except ImportError:  # pragma: no cover
        print(msg, flush=True)


def _json_default(o: Any):
    if isinstance(o, torch.Tensor):
        return o.item() if o.numel() == 1 else o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def make_unique_dir(base: str) -> str:
    """Create and return ``base``, or ``base_2``, ``base_3``, ... if it exists (``os.makedirs`` without
    ``exist_ok`` decides, so two processes started in the same second never share a folder)."""
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}_{n}"


class NotWritableError(UserError, OSError):
    """An output folder (``-out``, ``-log_dir``) in which this process cannot create files."""


def check_writable(path: str, flag: str) -> None:
    """Raise :class:`NotWritableError` ``<flag> <path> is not writable (<why>)`` unless a file can be created in
    folder ``path``, or, when it does not exist yet, in its nearest existing parent (where it would be created).

    A real write probe (a temporary file created and removed), not the permission bits: it also catches a
    read-only mount, a full disk and a path under a regular file, and gives the same answer when run as root.
    Call it before any long work, so that a run does not fail only when it writes its first output."""
    target = os.path.abspath(path)
    where = target
    while not os.path.lexists(where):
        where = os.path.dirname(where)
    fail = f"{flag} {path} is not writable"
    if not os.path.exists(where):
        raise NotWritableError(f"{fail} ({where} is a broken symbolic link)")
    if not os.path.isdir(where):
        raise NotWritableError(f"{fail} ({'it' if where == target else where} is a file, not a folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write_probe_", suffix=".tmp", dir=where)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise NotWritableError(f"{fail} (cannot create a file in {where}: {why})") from None
    os.close(fd)
    os.remove(probe)


def run_path_of(existing_path: str) -> str:
    """The run directory that ``-resume existing_path`` continues: ``existing_path`` itself, or the run of a
    checkpoint file (the folder holding ``checkpoints/``, else the file's own folder)."""
    path = os.path.abspath(existing_path)
    if os.path.isfile(path):
        path = os.path.dirname(path)
        if os.path.basename(path) == "checkpoints":
            path = os.path.dirname(path)
    return path


class RunLockedError(UserError, RuntimeError):
    """Another live process holds the run directory's lock."""


class RunLock:
    """An exclusive lock on a run directory: ``<run>/run.lock`` holding ``"<pid> <host>"``, locked with
    ``fcntl.flock`` for as long as this object is held. The kernel drops the lock when its process dies, so
    the file of a dead process is taken over. :meth:`release` (or process exit) unlocks and removes it."""

    NAME = "run.lock"

    def __init__(self, run_path: str):
        self.path = os.path.join(run_path, self.NAME)
        self._file = None
        for _ in range(10):
            f = open(self.path, "a+", encoding="utf-8")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                owner = f.read().strip() or "unknown"
                f.close()
                pid, _, host = owner.partition(" ")
                raise RunLockedError(
                    f"run directory {run_path} is in use by process {pid}" + (f" on {host}" if host else "")
                    + f" (lock file {self.path}); wait for that run to finish or stop it") from None
            try:  # the file we locked must still be the one at self.path (a releasing holder unlinks it)
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        else:
            raise RunLockedError(f"could not lock {self.path}: it keeps being replaced by another process")
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()} {socket.gethostname()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        self._file.close()  # closing the last descriptor drops the flock
        self._file = None


def _cell(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    return v


def _to_floats(values: dict) -> dict:
    """Scalars (Python numbers, numpy scalars, 1-element tensors) as floats, with one host transfer per
    device for all tensors together."""
    out, tensors = {}, {}
    for k, v in values.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                raise ValueError(f"log_scalars: {k!r} has {v.numel()} elements, expected a scalar")
            tensors.setdefault(v.device, []).append((k, v))
        elif isinstance(v, (np.generic, np.ndarray)):
            out[k] = float(np.asarray(v).reshape(()))
        else:
            out[k] = float(v)
    for items in tensors.values():
        stacked = torch.stack([t.detach().reshape(()).to(torch.float32) for _, t in items])
        for (k, _), f in zip(items, stacked.cpu().tolist()):
            out[k] = f
    return {k: out[k] for k in values}


def point_latest(log_dir: str, exp_name: str, path: str) -> str:
    """``<log_dir>/<exp_name>_latest``: a symbolic link to the newest run directory of ``exp_name`` (replaced
    atomically), or, where links cannot be made, a text file holding its path. Returns the link's path."""
    latest = os.path.join(log_dir, f"{exp_name}_latest")
    tmp = f"{latest}.{os.getpid()}.tmp"
    try:
        os.symlink(os.path.basename(path), tmp)            # relative: the logs folder may be moved
        os.replace(tmp, latest)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if os.path.islink(latest) or os.path.isdir(latest):
            with contextlib.suppress(OSError):
                os.remove(latest)
        with open(latest, "w", encoding="utf-8") as f:
            f.write(os.path.abspath(path) + "\n")
    return latest


class RunDir:
    """Outputs of one training run. Build with :meth:`create` (new run) or :meth:`open` (resume)."""

    CONFIG, METRICS, SUMMARY, LOG = "config.json", "metrics.csv", "summary.json", "train.log"

    def __init__(self, path: Optional[str], is_main: bool = True, purge_step: Optional[int] = None,
                 tensorboard: bool = True, lock: Optional[RunLock] = None):
        self.is_main = bool(is_main) and path is not None
        self.path = os.path.abspath(path) if self.is_main else None
        self._writer = None
        self._fields: Optional[list] = None
        self._lock = lock
        if not self.is_main:
            return
        if self._lock is None:
            self._lock = RunLock(self.path)
        os.makedirs(self.checkpoints_dir, exist_ok=True)
        os.makedirs(self.vis_dir, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=self.path, purge_step=purge_step)
        if os.path.exists(self.metrics_path):
            with open(self.metrics_path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            self._fields = list(header) if header else None

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def create(cls, log_dir: str, exp_name: str, config: Any, is_main: bool = True,
               timestamp: Optional[str] = None, tensorboard: bool = True) -> "RunDir":
        """A new run directory ``<log_dir>/<exp_name>_<YYYYmmdd-HHMMSS>`` (``_2``, ``_3``, ... appended if it
        exists) with ``config.json`` (``config``: ``TrainConfig.to_dict()``). Only the main rank creates it."""
        if not is_main:
            return cls(None, is_main=False)
        stamp = timestamp or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = make_unique_dir(os.path.join(log_dir, f"{exp_name}_{stamp}"))
        run = cls(path, is_main=True, tensorboard=tensorboard)
        write_json_atomic(run.config_path, dict(config))
        point_latest(log_dir, exp_name, path)
        return run

    @classmethod
    def open(cls, existing_path: str, is_main: bool = True, resume_iteration: Optional[int] = None,
             tensorboard: bool = True) -> "RunDir":
        """Re-open a run to resume it: ``existing_path`` is the run directory or a checkpoint inside its
        ``checkpoints/``. With ``resume_iteration``, TensorBoard events and ``metrics.csv`` rows (column
        ``iteration``) written after that iteration by the interrupted run are dropped, so curves do not
        double back."""
        if not is_main:
            return cls(None, is_main=False)
        path = run_path_of(existing_path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"run directory not found: {existing_path}")
        lock = RunLock(path)  # before touching anything another run may be writing
        try:
            if resume_iteration is not None:
                cls._truncate_metrics(os.path.join(path, cls.METRICS), resume_iteration)
            return cls(path, is_main=True,
                       purge_step=(resume_iteration + 1) if resume_iteration is not None else None,
                       tensorboard=tensorboard, lock=lock)
        except BaseException:
            lock.release()
            raise

    @staticmethod
    def _truncate_metrics(metrics_path: str, resume_iteration: int) -> None:
        if not os.path.exists(metrics_path):
            return
        with open(metrics_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = reader.fieldnames
        if not fields or "iteration" not in fields:
            return

        def keep(r):
            try:
                return float(r["iteration"]) <= resume_iteration
            except (TypeError, ValueError):
                return True
        kept = [r for r in rows if keep(r)]
        if len(kept) != len(rows):
            RunDir._write_csv(metrics_path, fields, kept)

    @staticmethod
    def _write_csv(path: str, fields: list, rows: list) -> None:
        with atomic_write(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)

    # -- paths ---------------------------------------------------------------------------------
    def _join(self, *parts) -> Optional[str]:
        return os.path.join(self.path, *parts) if self.path else None

    @property
    def checkpoints_dir(self) -> Optional[str]:
        return self._join("checkpoints")

    @property
    def vis_dir(self) -> Optional[str]:
        return self._join("vis")

    @property
    def config_path(self) -> Optional[str]:
        return self._join(self.CONFIG)

    @property
    def metrics_path(self) -> Optional[str]:
        return self._join(self.METRICS)

    @property
    def summary_path(self) -> Optional[str]:
        return self._join(self.SUMMARY)

    def checkpoint_path(self, name: str = "last") -> Optional[str]:
        """``checkpoints/<name>.pt`` (``last`` / ``best``)."""
        return self._join("checkpoints", f"{name}.pt")

    def read_config(self) -> Optional[dict]:
        if not self.is_main or not os.path.exists(self.config_path):
            return None
        with open(self.config_path, encoding="utf-8") as f:
            return json.load(f)

    def record_resume(self, entry: dict) -> None:
        """Append ``entry`` (e.g. ``{"iteration", "checkpoint", "changed": {flag: [old, new]}}``) to the
        ``resumed`` list of ``config.json``, rewriting it atomically; the original values stay as they were."""
        if not self.is_main:
            return
        cfg = self.read_config() or {}
        cfg["resumed"] = list(cfg.get("resumed") or []) + [dict(entry)]
        write_json_atomic(self.config_path, cfg)

    # -- logging -------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        """Console line (tqdm-safe) plus a copy in ``train.log``; main rank only."""
        if not self.is_main:
            return
        console(msg)
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        with open(self._join(self.LOG), "a", encoding="utf-8") as f:
            f.write(f"[{stamp}] {msg}\n")

    def log_scalars(self, step: int, scalars: dict, prefix: str = "") -> Optional[dict]:
        """Write scalars to TensorBoard. Values may be numbers or 1-element tensors (on any device): they
        are fetched in one batched transfer here, so keep tensors in the loop and call this only at log
        intervals. Returns the values as floats (main rank), ``None`` elsewhere."""
        if not self.is_main:
            return None
        values = _to_floats(scalars)
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(f"{prefix}{k}", v, global_step=int(step))
        return values

    def append_metrics_row(self, row: dict) -> None:
        """Append one row to ``metrics.csv``. The header comes from the first row; a row with new keys
        rewrites the file with those columns added at the end (older rows get empty cells); missing keys
        are left empty. Tensors/numpy scalars are converted."""
        if not self.is_main:
            return
        row = {str(k): _cell(v) for k, v in row.items()}
        path = self.metrics_path
        if self._fields is None:
            self._fields = list(row)
            self._write_csv(path, self._fields, [row])
            return
        new = [k for k in row if k not in self._fields]
        if new:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            self._fields = self._fields + new
            self._write_csv(path, self._fields, rows + [row])
            return
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self._fields, restval="").writerow(row)

    def read_metrics(self) -> list:
        if not self.is_main or not os.path.exists(self.metrics_path):
            return []
        with open(self.metrics_path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def write_summary(self, summary: dict) -> None:
        """Write ``summary.json`` atomically (replaces the previous one)."""
        if self.is_main:
            write_json_atomic(self.summary_path, summary)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the TensorBoard writer and release the run directory's lock."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
