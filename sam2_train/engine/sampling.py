"""The order of training data: a deterministic resumable sampler (:class:`ResumableSampler`, per-rank shards,
2D slabs of a batch from distinct volumes), :class:`EpochKeyed` items, the epoch-advancing
:class:`InfiniteLoader`, and :func:`make_loader`, the training DataLoader built on them."""
from __future__ import annotations

import collections
import math
import signal
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from sam2_train.engine.errors import RunSetupError

__all__ = ["ResumableSampler", "distinct_group_blocks", "EpochKeyed", "InfiniteLoader", "make_loader"]

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
    sampler (the workers would keep the first epoch's copy of the dataset). Each new DataLoader iterator draws one
    number from the global torch RNG unless the DataLoader was built with ``generator=torch.Generator()``; pass one
    to keep the global RNG stream identical between resumed and uninterrupted runs.
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


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only read and augment; threads would fight the training process
    # Ctrl-C is the training process's to handle (it stops at an iteration boundary and shuts the workers down);
    # workers that took it too would each print a KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(ds, batch_size: int, *, seed: int, num_workers: int, dist) -> DataLoader:
    """Training DataLoader: an endless resumable sampler (this process's shard, drop_last; 2D slabs of a batch
    from distinct volumes via ``ds.groups``) over ``EpochKeyed(ds)``, with persistent workers: the epoch
    advances inside the sampler, so workers prefetch across epoch boundaries. Use it through
    :class:`InfiniteLoader`."""
    if len(ds) // dist.world_size < batch_size:
        raise RunSetupError(f"{type(ds).__name__}: {len(ds)} items is fewer than one batch of {batch_size} per "
                            f"process; lower the batch size")
    sampler = ResumableSampler(len(ds), batch_size=batch_size, seed=seed, rank=dist.rank,
                               world_size=dist.world_size, shuffle=True, drop_last=True,
                               groups=getattr(ds, "groups", None), block=batch_size, endless=True)
    return DataLoader(EpochKeyed(ds), batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                      persistent_workers=num_workers > 0, worker_init_fn=_worker_init)
