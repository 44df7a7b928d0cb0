"""Run-time setup of a training process: device, precision, seeds, distributed (torchrun / DDP, NCCL on CUDA,
gloo on CPU), a deterministic resumable sampler, an epoch-advancing infinite loader, and the non-finite guard.

Every rank calls :func:`init_distributed` first (it selects the device), then :func:`seed_everything`; a
loader over :class:`ResumableSampler` wrapped in :class:`InfiniteLoader` yields batches from any resumed
iteration on; :meth:`NonFiniteGuard.check` is a collective (ranks agree on skipping a step).
"""
from __future__ import annotations

import collections
import contextlib
import datetime
import math
import os
import random
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "select_device", "enable_tf32", "amp_dtype", "autocast", "seed_everything",
    "DistInfo", "init_distributed", "wrap_ddp", "unwrap_model", "barrier",
    "broadcast_object", "cleanup", "is_dist", "get_rank", "get_world_size", "is_main_process",
    "ResumableSampler", "distinct_group_blocks", "EpochKeyed", "InfiniteLoader", "NonFiniteGuard",
    "TrainingDiverged",
]


# ----------------------------------------------------------------------------------------------
# device, precision, seeds
# ----------------------------------------------------------------------------------------------
def _env_int(name: str) -> Optional[int]:
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    return int(v)


def select_device(device: str = "auto", gpu_device: int = 0) -> torch.device:
    """The device for this process from ``device`` (auto/cuda/cpu, flag ``-device``) and ``gpu_device``.

    Under torchrun the environment's ``LOCAL_RANK`` picks the GPU (``-gpu_device`` is then ignored).
    ``-device cuda`` without a usable GPU raises a ``RuntimeError`` saying so. On CUDA the device is made
    current (``torch.cuda.set_device``) and TF32 matmuls/convolutions are enabled.
    """
    want = (device or "auto").lower()
    if want not in ("auto", "cuda", "cpu"):
        raise ValueError(f"-device must be auto, cuda or cpu, got {want!r}")
    has_cuda = torch.cuda.is_available()
    if want == "cpu" or (want == "auto" and not has_cuda):
        return torch.device("cpu")
    if not has_cuda:
        raise RuntimeError("-device cuda was requested but CUDA is not available "
                           f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                           "use -device cpu or -device auto")
    local_rank = _env_int("LOCAL_RANK")
    index = local_rank if local_rank is not None else int(gpu_device or 0)
    n = torch.cuda.device_count()
    if index >= n:
        src = "LOCAL_RANK" if local_rank is not None else "-gpu_device"
        raise RuntimeError(f"{src}={index} but only {n} CUDA device(s) are visible")
    torch.cuda.set_device(index)
    enable_tf32()
    return torch.device("cuda", index)


def enable_tf32() -> None:
    """Allow TF32 for fp32 matmuls and cuDNN convolutions (no effect on CPU).

    Uses ``torch.set_float32_matmul_precision("high")`` (and cuDNN's ``allow_tf32``): with these, both the
    legacy ``allow_tf32`` flags and the newer ``fp32_precision`` ones read consistently, whereas setting only
    the new ``fp32_precision`` API makes later reads of the legacy flags (by other libraries) raise.
    """
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def amp_dtype(device: torch.device | str, amp: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for ``-amp`` on ``device``, or ``None`` for full fp32.

    ``auto``: bf16 on CUDA (when the GPU supports it), off on CPU. ``bf16``: bf16 on CUDA and also on CPU
    (``torch.autocast("cpu", torch.bfloat16)``: on cores with AMX (Xeon Sapphire Rapids and later) a U-Net
    step is about 2x faster than fp32, on CPUs without AMX/AVX512-BF16 it is usually slower). ``off``: fp32.
    """
    device = torch.device(device)
    amp = (amp or "auto").lower()
    if amp == "off":
        return None
    if amp not in ("auto", "bf16"):
        raise ValueError(f"-amp must be auto, bf16 or off, got {amp!r}")
    if device.type == "cuda":
        if amp == "auto" and not torch.cuda.is_bf16_supported():
            warnings.warn("this GPU does not support bf16: -amp auto runs in fp32")
            return None
        return torch.bfloat16
    if device.type == "cpu":
        return torch.bfloat16 if amp == "bf16" else None
    return torch.bfloat16 if amp == "bf16" else None


def autocast(device: torch.device | str, amp: str = "auto"):
    """Context manager: bf16 autocast per :func:`amp_dtype`, else a no-op. Never casts the model:
    weights stay fp32 (Adam updates in bf16 would round to zero)."""
    device = torch.device(device)
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python ``random``, numpy's global RNG, torch CPU and all CUDA RNGs with ``seed + rank``
    (so ranks draw different augmentations/dropout). Returns the seed used."""
    s = int(seed) + int(rank)
    random.seed(s)
    np.random.seed(s % (2 ** 32))
    torch.manual_seed(s)  # seeds every CUDA device as well
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(s)
    return s


# ----------------------------------------------------------------------------------------------
# distributed
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    is_main: bool = True
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        """True when a process group is in use (torchrun / DDP)."""
        return self.world_size > 1 or is_dist()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0



def init_distributed(device: str = "auto", gpu_device: int = 0, distributed: str = "auto") -> DistInfo:
    """Set up this process from the torchrun environment (``RANK``/``LOCAL_RANK``/``WORLD_SIZE``,
    ``MASTER_ADDR``/``MASTER_PORT``); never from a ``--local_rank`` argument.

    ``-distributed none``: one process, whatever the environment says. ``auto``: DDP when the
    environment names a world size > 1 (torchrun), else one process. ``ddp``: DDP, and an error when not
    launched by torchrun. Backend NCCL on CUDA, gloo on CPU. Also selects the device
    (:func:`select_device`, ``LOCAL_RANK`` picks the GPU) and reuses an existing process group.
    """
    mode = (distributed or "auto").lower()
    if mode not in ("none", "auto", "ddp"):
        raise ValueError(f"-distributed must be none, auto or ddp, got {mode!r}")
    env_world = _env_int("WORLD_SIZE")
    env_rank = _env_int("RANK")
    if mode == "none":
        if env_world is not None and env_world > 1:
            warnings.warn(f"-distributed none under a launcher with WORLD_SIZE={env_world}: every process "
                          "runs an independent single-process training")
        # LOCAL_RANK still picks the GPU if set; this is the documented torchrun behaviour
        return DistInfo(0, 0, 1, True, select_device(device, gpu_device))
    use_ddp = is_dist() or (env_world is not None and env_rank is not None
                            and (env_world > 1 or mode == "ddp"))
    if not use_ddp:
        if mode == "ddp":
            raise RuntimeError("-distributed ddp needs the torchrun environment (RANK, WORLD_SIZE, "
                               "MASTER_ADDR, MASTER_PORT); launch with `torchrun --nproc_per_node=N "
                               "train_2d.py ...` or use -distributed auto")
        return DistInfo(0, 0, 1, True, select_device(device, gpu_device))
    dev = select_device(device, gpu_device)
    if not is_dist():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(f"distributed run without {name} in the environment; launch with torchrun")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        # rank 0 validates whole volumes while the others wait at a barrier: allow longer than the
        # default 10 minutes (a 1024-px validation of a large split can take that long)
        dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(hours=2), **kw)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = _env_int("LOCAL_RANK")
    if local_rank is None:
        local_rank = rank
    return DistInfo(rank, local_rank, world, rank == 0, dev)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) or (
                hasattr(model, "module") and isinstance(model, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def compile_image_encoders(*nets: torch.nn.Module) -> int:
    """``-compile 1``: ``torch.compile`` the SAM-2 image encoder of each distinct network (``SSSNet``, maybe
    wrapped) in place with ``nn.Module.compile``, so parameters and state-dict keys stay as they are
    (checkpoints and the EMA are unaffected). Returns the number of encoders compiled."""
    done = set()
    for net in nets:
        encoder = unwrap_model(net).sam.sam.image_encoder
        if id(encoder) not in done:
            encoder.compile()
            done.add(id(encoder))
    return len(done)


def wrap_ddp(model: torch.nn.Module, dist_info: DistInfo, **ddp_kwargs) -> torch.nn.Module:
    """Wrap ``model`` (already on ``dist_info.device``) in DistributedDataParallel when a process group is
    in use; return it unchanged otherwise. Extra keyword arguments go to DDP (e.g.
    ``find_unused_parameters=True`` when some parameters get no gradient in a step)."""
    if not is_dist():
        return model
    if dist_info.device.type == "cuda":
        ddp_kwargs.setdefault("device_ids", [dist_info.device.index])
        ddp_kwargs.setdefault("output_device", dist_info.device.index)
    return torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)


def average_gradients(params) -> None:
    """Average the gradients of ``params`` over the processes (one all-reduce of a flat buffer; nothing without
    DDP): for a network trained outside the DDP wrapper (SAM-Match's fine-tuned SAM-2 guide)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not is_dist():
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= get_world_size()
    for g, avg in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(avg)


def barrier() -> None:
    if is_dist():
        if dist.get_backend() == "nccl" and torch.cuda.is_available():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (e.g. the run directory rank 0 created)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Destroy the process group if there is one."""
    if is_dist():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# data order
# ----------------------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int) -> int:
    # Mix (seed, epoch) so (s, e+1) and (s+1, e) give unrelated permutations.
    return (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (2 ** 63)


def distinct_group_blocks(indices: list[int], groups, block: int) -> list[int]:
    """Reorder ``indices`` into consecutive runs of ``block`` samples from distinct ``groups[i]``.

    Order-keeping greedy: each run takes the earliest remaining samples whose group it does not hold yet,
    except that a group with as many remaining samples as there are runs left goes in first (otherwise its
    samples would pile up at the end). Where the samples cannot fill distinct runs (a group holds more
    than one per run), the largest groups go first and the last runs repeat groups; the samples left
    after the last full run follow in order. Returns a permutation of ``indices``.
    """
    gk = [groups[i] for i in indices]                      # group of each position
    by_group: dict = {}
    for k, g in enumerate(gk):
        by_group.setdefault(g, collections.deque()).append(k)
    taken = [False] * len(indices)
    out, start, remaining = [], 0, len(indices)
    while remaining >= block:
        runs_left = remaining // block
        urgent = sorted((g for g, q in by_group.items() if len(q) >= runs_left), key=lambda g: -len(by_group[g]))
        run_groups = urgent[:block]
        k = start
        while len(run_groups) < block and k < len(indices):
            if not taken[k] and gk[k] not in run_groups:
                run_groups.append(gk[k])
            k += 1
        if len(run_groups) < block:                        # fewer groups left than a run holds
            break
        run = sorted(by_group[g].popleft() for g in run_groups)
        for k in run:
            taken[k] = True
        for g in run_groups:
            if not by_group[g]:
                del by_group[g]
        while start < len(indices) and taken[start]:
            start += 1
        out += run
        remaining -= block
    out += [k for k in range(len(indices)) if not taken[k]]
    return [indices[k] for k in out]


class ResumableSampler(Sampler[int]):
    """Deterministic, resumable, rank-sharded sampler for training.

    Epoch ``e`` is a permutation of ``range(dataset_len)`` seeded by ``(seed, e)`` (identity order with
    ``shuffle=False``), split across ranks like ``DistributedSampler`` (rank r takes positions
    r, r+W, r+2W, ...). ``drop_last=True`` drops the tail so that every rank gets the same number of samples
    and, if ``batch_size`` is given, a whole number of batches (use the DataLoader with the same
    ``batch_size`` and ``drop_last=True``); ``drop_last=False`` pads by repeating the first indices.

    ``set_epoch(e)`` selects the epoch and clears any skip; ``skip(n)`` makes the *next* iteration start
    after the first ``n`` batches (``n`` samples when ``batch_size`` is None) of this rank's shard, so a
    resumed run draws exactly the batches an uninterrupted run would have drawn. ``len()`` is always the
    full per-rank epoch length (so ``len(loader)`` is the number of batches per epoch).

    ``groups`` (one id per sample, e.g. the volume a 2D slab comes from) with ``block`` (the DataLoader's
    batch size): each rank's shard is reordered so that every run of ``block`` consecutive samples holds
    distinct groups wherever the shard allows it (:func:`distinct_group_blocks`).

    ``endless=True`` (needs ``batch_size`` and ``drop_last=True``): one iterator runs through epoch
    ``self.epoch`` (after the skip), then epochs ``+1``, ``+2``, ... without end, yielding ``(epoch, index)``
    keys for an :class:`EpochKeyed` dataset. The epoch thus advances inside the sampler: the DataLoader
    iterator is made once, its (persistent) workers keep prefetching across epoch boundaries, and the
    batches are exactly those of the per-epoch iteration.
    """

    def __init__(self, dataset_len: int, batch_size: Optional[int] = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, drop_last: bool = True,
                 groups: Optional[list] = None, block: int = 1, endless: bool = False):
        if groups is not None and len(groups) != dataset_len:
            raise ValueError(f"ResumableSampler: {len(groups)} groups for {dataset_len} samples")
        self.groups, self.block = (None if groups is None else list(groups)), int(block)
        if dataset_len <= 0:
            raise ValueError(f"ResumableSampler: empty dataset (dataset_len={dataset_len})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ResumableSampler: invalid rank {rank} for world_size {world_size}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"ResumableSampler: batch_size must be >= 1, got {batch_size}")
        if endless and (batch_size is None or not drop_last):
            raise ValueError("ResumableSampler: endless=True needs a batch_size and drop_last=True "
                             "(an endless stream has no partial last batch)")
        self.endless = bool(endless)
        self.dataset_len = int(dataset_len)
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        if drop_last:
            per_rank = self.dataset_len // self.world_size
            if batch_size is not None:
                per_rank = (per_rank // batch_size) * batch_size
            if per_rank == 0:
                need = self.world_size * (batch_size or 1)
                raise ValueError(f"ResumableSampler: {self.dataset_len} samples are fewer than one batch per "
                                 f"rank ({need} = world_size {self.world_size} x batch {batch_size or 1}) "
                                 "with drop_last=True")
        else:
            per_rank = math.ceil(self.dataset_len / self.world_size)
        self.num_samples = per_rank            # per rank, per epoch
        self.total_size = per_rank * self.world_size
        self.epoch = 0
        self._skip_samples = 0

    @property
    def batches_per_epoch(self) -> int:
        if self.batch_size is None:
            raise ValueError("batches_per_epoch needs a batch_size")
        return math.ceil(self.num_samples / self.batch_size)  # == num_samples // bs with drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._skip_samples = 0

    def skip(self, n: int) -> None:
        """Skip the first ``n`` batches (samples if no ``batch_size``) of the current epoch's shard, once."""
        n = int(n)
        samples = n * self.batch_size if self.batch_size is not None else n
        if n < 0 or samples > self.num_samples:
            unit = "batches" if self.batch_size is not None else "samples"
            raise ValueError(f"ResumableSampler.skip({n}): an epoch has only "
                             f"{self.batches_per_epoch if self.batch_size else self.num_samples} {unit} per rank")
        self._skip_samples = samples

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's full shard of epoch ``epoch`` (no skip)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(self.dataset_len, generator=g)
        else:
            order = torch.arange(self.dataset_len)
        if self.total_size <= self.dataset_len:
            order = order[: self.total_size]
        else:  # pad (drop_last=False) by repeating from the start
            reps = math.ceil(self.total_size / self.dataset_len)
            order = order.repeat(reps)[: self.total_size]
        shard = order[self.rank: self.total_size: self.world_size].tolist()
        if self.groups is not None and self.block > 1:
            shard = distinct_group_blocks(shard, self.groups, self.block)
        return shard

    def __iter__(self) -> Iterator:
        skip, self._skip_samples = self._skip_samples, 0   # one-shot
        if self.endless:
            return self._endless(self.epoch, skip)
        return iter(self.epoch_indices(self.epoch)[skip:])

    def _endless(self, epoch: int, skip: int) -> Iterator[tuple[int, int]]:
        """(epoch, index) keys from ``skip`` samples into ``epoch``, then every later epoch."""
        while True:
            for i in self.epoch_indices(epoch)[skip:]:
                yield epoch, i
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"])


class EpochKeyed(torch.utils.data.Dataset):
    """Dataset view indexed by ``(epoch, index)`` keys (from an endless :class:`ResumableSampler`).

    ``self[(e, i)]`` calls ``dataset.set_epoch(e)`` (when the dataset has it) on this process's copy and
    returns ``dataset[i]``; each DataLoader worker holds its own copy, so the epoch reaches the workers with
    every key and persistent workers never see a stale epoch. The datasets here draw their augmentation from
    ``(seed, epoch, index)`` only, so the item does not depend on which worker loads it.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        return self.dataset[index]


class InfiniteLoader:
    """Endless iterator over a DataLoader that advances the epoch at each pass.

    At the start of epoch ``e`` it calls ``set_epoch(e)`` on the loader's sampler (and on a batch sampler
    if it has one) and on the dataset when it has ``set_epoch`` (datasets here draw augmentation randomness
    from ``(seed, epoch, index)``). ``start_iter`` = batches already drawn from this loader by the run being
    resumed: the iterator then starts at epoch ``start_iter // len(loader)`` and skips
    ``start_iter % len(loader)`` batches (needs a :class:`ResumableSampler`, the loader's ``drop_last``
    consistent with it), so it yields exactly what the uninterrupted run would have yielded.

    With an endless sampler (``ResumableSampler(endless=True)`` over an :class:`EpochKeyed` dataset) the
    DataLoader iterator is made once and never ends: the sampler carries the epoch, so workers can be
    persistent and keep prefetching across epoch boundaries (no stall at each epoch start).

    Notes: ``persistent_workers=True`` is refused with a dataset that has ``set_epoch`` and a per-epoch
    sampler (the workers would keep the first epoch's copy of the dataset). Each new DataLoader iterator draws one number from the
    global torch RNG unless the DataLoader was built with ``generator=torch.Generator()``; pass one to keep the
    global RNG stream identical between resumed and uninterrupted runs.
    """

    def __init__(self, loader, start_iter: int = 0):
        self.loader = loader
        n = len(loader)
        if n == 0:
            raise ValueError("InfiniteLoader: the DataLoader yields no batch per epoch")
        self.batches_per_epoch = n
        ds = loader.dataset
        if getattr(loader, "persistent_workers", False) and callable(getattr(ds, "set_epoch", None)):
            raise ValueError("InfiniteLoader: persistent_workers=True would keep the dataset's first epoch in the "
                             "workers; build the DataLoader with persistent_workers=False")
        sampler = self._resumable()
        self.endless = sampler is not None and sampler.endless
        if self.endless and not isinstance(ds, EpochKeyed):
            raise ValueError("InfiniteLoader: an endless ResumableSampler yields (epoch, index) keys; wrap the "
                             "dataset in EpochKeyed")
        self.epoch, skip = divmod(int(start_iter), n)
        self.iteration = int(start_iter)
        self._it = None
        self._pending_skip = skip
        if skip:
            sampler = self._resumable()
            if sampler is None:
                raise ValueError("InfiniteLoader: resuming mid-epoch needs a ResumableSampler in the DataLoader")
            if sampler.batch_size is not None and loader.batch_size is not None \
                    and sampler.batch_size != loader.batch_size:
                raise ValueError(f"InfiniteLoader: sampler batch_size {sampler.batch_size} != "
                                 f"DataLoader batch_size {loader.batch_size}")

    def _resumable(self) -> Optional[ResumableSampler]:
        for s in (getattr(self.loader, "sampler", None),
                  getattr(getattr(self.loader, "batch_sampler", None), "sampler", None)):
            if isinstance(s, ResumableSampler):
                return s
        return None

    def _set_epoch(self, epoch: int) -> None:
        seen = set()
        for obj in (getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None),
                    getattr(getattr(self.loader, "batch_sampler", None), "sampler", None),
                    self.loader.dataset):
            if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
                seen.add(id(obj))
                obj.set_epoch(epoch)

    def _start_epoch(self) -> None:
        self._set_epoch(self.epoch)
        if self._pending_skip:
            sampler = self._resumable()
            n = self._pending_skip
            if sampler.batch_size is None:  # the sampler counts samples
                n *= (self.loader.batch_size or getattr(self.loader.batch_sampler, "batch_size", None) or 1)
            sampler.skip(n)
            self._pending_skip = 0
        self._it = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._start_epoch()
        if self.endless:  # the sampler moves on to the next epoch by itself
            batch = next(self._it)
            self.iteration += 1
            self.epoch = self.iteration // self.batches_per_epoch
            return batch
        while True:
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch += 1
                self._start_epoch()
                continue
            self.iteration += 1
            return batch


# ----------------------------------------------------------------------------------------------
# non-finite loss guard
# ----------------------------------------------------------------------------------------------
class TrainingDiverged(RuntimeError):
    """Raised by :class:`NonFiniteGuard` after ``max_bad_steps`` non-finite losses in a row."""


class NonFiniteGuard:
    """Decides whether to take an optimiser step, skipping non-finite losses, and stops a run whose weights
    became non-finite.

    ``check(loss, iteration)`` returns True when ``loss`` (any tensor: the loss, or a gradient norm) is
    finite everywhere. It costs one host sync per call (the step/skip decision needs the value on the host;
    the loss value itself should only be fetched at log intervals). Under DDP the flags are all-reduced
    (MIN) first, so all ranks skip together and stay in lockstep: every rank must call ``check`` each step.
    A skipped step warns with the iteration number; ``max_bad_steps`` skips in a row raise
    :class:`TrainingDiverged` (the last good checkpoint stays on disk).

    After an optimiser step, ``watch_weights(params, iteration)`` queues a finiteness flag of the updated
    weights on the device (no sync). The next ``check`` reads it in the same sync as the loss; before a
    checkpoint or a validation, ``require_finite_weights()`` reads a flag still pending (one sync, only
    then). Non-finite weights raise :class:`TrainingDiverged` naming the iteration whose update made them,
    so they never reach a checkpoint. ``iteration`` is the number the logs and checkpoints use for the step
    (steps done, counting from 1).
    """

    def __init__(self, max_bad_steps: int = 5):
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {max_bad_steps}")
        self.max_bad_steps = int(max_bad_steps)
        self.bad_in_row = 0
        self.total_skipped = 0
        self._pending: Optional[tuple] = None   # (bool tensor on the device, iteration) of watched weights

    def watch_weights(self, params, iteration: Optional[int] = None) -> None:
        """Queue whether every tensor in ``params`` is finite (max-abs per tensor, one fused kernel, so a
        large finite weight never reads as overflow), without a host sync."""
        tensors = [p.detach() for p in params]
        if not tensors:
            return
        flag = torch.isfinite(torch.stack(torch._foreach_norm(tensors, float("inf")))).all()
        self._pending = (flag, iteration)

    def _all_ranks_min(self, flags: torch.Tensor) -> list:
        if is_dist():
            if dist.get_backend() == "nccl" and flags.device.type != "cuda":
                flags = flags.cuda()
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        return flags.tolist()

    def _weights_diverged(self, iteration: Optional[int]) -> TrainingDiverged:
        where = f"iteration {iteration}" if iteration is not None else "the last step"
        return TrainingDiverged(f"non-finite weights after the update of {where} (the loss and gradients were "
                                "finite; lower -lr?): training diverged, the last good checkpoint is kept")

    def require_finite_weights(self) -> None:
        """Raise :class:`TrainingDiverged` if the weights queued by :meth:`watch_weights` are not finite.
        Costs one sync when a flag is pending, nothing otherwise. Collective under DDP."""
        if self._pending is None:
            return
        flag, iteration = self._pending
        self._pending = None
        if not self._all_ranks_min(flag.to(torch.float32).reshape(1))[0]:
            raise self._weights_diverged(iteration)

    def check(self, loss, iteration: Optional[int] = None) -> bool:
        pending, self._pending = self._pending, None
        if isinstance(loss, torch.Tensor):
            flags = [torch.isfinite(loss.detach()).all()]
            if pending is not None:
                flags.append(pending[0].to(flags[0].device))
            values = self._all_ranks_min(torch.stack(flags).to(torch.float32))  # the one sync of the step
            ok = bool(values[0])
            if pending is not None and not values[1]:
                raise self._weights_diverged(pending[1])
        else:
            if pending is not None:
                self._pending = pending
                self.require_finite_weights()
            ok = math.isfinite(float(loss))
            if is_dist():
                t = torch.tensor(float(ok), device="cuda" if dist.get_backend() == "nccl" else "cpu")
                dist.all_reduce(t, op=dist.ReduceOp.MIN)
                ok = bool(t.item())
        if ok:
            self.bad_in_row = 0
            return True
        self.bad_in_row += 1
        self.total_skipped += 1
        where = f"iteration {iteration}" if iteration is not None else "this step"
        if self.bad_in_row >= self.max_bad_steps:
            raise TrainingDiverged(f"non-finite loss at {where}: {self.bad_in_row} in a row "
                                   f"(-max_bad_steps {self.max_bad_steps}); training diverged, "
                                   "the last good checkpoint is kept")
        warnings.warn(f"non-finite loss at {where}: step skipped "
                      f"({self.bad_in_row}/{self.max_bad_steps} in a row)", RuntimeWarning, stacklevel=2)
        return False

    def state_dict(self) -> dict:
        return {"bad_in_row": self.bad_in_row, "total_skipped": self.total_skipped}

    def load_state_dict(self, state: dict) -> None:
        self.bad_in_row = int(state.get("bad_in_row", 0))
        self.total_skipped = int(state.get("total_skipped", 0))
