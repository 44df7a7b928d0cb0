"""Device/amp/seed selection, ResumableSampler/InfiniteLoader, NonFiniteGuard, and a 2-process gloo DDP run."""
import os
import random
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset

from sam2_train.engine.device import amp_dtype, autocast, enable_tf32, seed_everything, select_device
from sam2_train.engine.distributed import DistInfo, barrier, init_distributed, unwrap_model, wrap_ddp
from sam2_train.engine.guard import NonFiniteGuard, TrainingDiverged
from sam2_train.engine.sampling import EpochKeyed, InfiniteLoader, ResumableSampler



# --------------------------------------------------------------------------- device / amp / seed
def test_select_device_cpu_and_auto(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device("auto") == torch.device("cpu")


def test_select_device_cuda_unavailable_is_clear(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="-device cuda was requested but CUDA is not available"):
        select_device("cuda")


def test_autocast_cpu_noop_and_bf16():
    assert amp_dtype("cpu", "auto") is None and amp_dtype("cpu", "off") is None
    assert amp_dtype("cpu", "bf16") is torch.bfloat16
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), "auto"):
        assert (a @ b).dtype == torch.float32
    lin = torch.nn.Linear(4, 4)
    with autocast("cpu", "bf16"):
        assert lin(a).dtype == torch.bfloat16
    assert lin.weight.dtype == torch.float32  # the model is never cast


def test_seed_everything_rank_offset():
    seed_everything(7, rank=0)
    r0 = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7, rank=0)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == r0
    seed_everything(7, rank=1)
    assert torch.rand(1).item() != r0[2]


def test_init_distributed_single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = init_distributed(device="cpu")
    assert info == DistInfo(0, 0, 1, True, torch.device("cpu")) and not info.distributed
    with pytest.raises(RuntimeError, match="torchrun"):
        init_distributed(device="cpu", distributed="ddp")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.warns(UserWarning, match="independent"):
        info = init_distributed(device="cpu", distributed="none")
    assert info.world_size == 1 and info.is_main
    m = torch.nn.Linear(2, 2)
    assert wrap_ddp(m, info) is m and unwrap_model(m) is m



# --------------------------------------------------------------------------- sampler
def batches_of(indices, bs):
    return [indices[i:i + bs] for i in range(0, len(indices), bs)]


def draw(sampler, epoch, skip=0):
    sampler.set_epoch(epoch)
    if skip:
        sampler.skip(skip)
    return list(sampler)


def test_sampler_permutation_deterministic_and_epoch_dependent():
    s = ResumableSampler(23, batch_size=4, seed=3)
    e0, e0b, e1 = draw(s, 0), draw(s, 0), draw(s, 1)
    assert e0 == e0b and e0 != e1
    assert len(e0) == len(s) == 20 and s.batches_per_epoch == 5 and len(set(e0)) == 20
    assert draw(ResumableSampler(23, batch_size=4, seed=4), 0) != e0
    assert draw(ResumableSampler(10, shuffle=False, drop_last=True), 5) == list(range(10))


def test_sampler_shards_disjoint_two_ranks():
    for drop_last in (True, False):
        r0 = ResumableSampler(25, batch_size=3, seed=1, rank=0, world_size=2, drop_last=drop_last)
        r1 = ResumableSampler(25, batch_size=3, seed=1, rank=1, world_size=2, drop_last=drop_last)
        a, b = draw(r0, 2), draw(r1, 2)
        assert len(a) == len(b) == len(r0)
        if drop_last:
            assert len(a) == 12 and not set(a) & set(b)
        else:  # padded like DistributedSampler: everything covered, 26 = 25 + 1 repeated
            assert len(a) == 13 and set(a) | set(b) == set(range(25))


def test_sampler_skip_resume_equals_uninterrupted_across_epochs():
    bs, world = 3, 2
    for rank in range(world):
        def make():
            return ResumableSampler(31, batch_size=bs, seed=11, rank=rank, world_size=world)
        s = make()
        bpe = s.batches_per_epoch
        full = [b for e in range(3) for b in batches_of(draw(s, e), bs)]
        assert len(full) == 3 * bpe
        for stop in (0, 2, bpe, bpe + 1, 2 * bpe - 1):
            before = full[:stop]
            s2 = make()  # fresh process after the interruption
            epoch, k = divmod(stop, bpe)
            after = batches_of(draw(s2, epoch, skip=k), bs)
            after += [b for e in range(epoch + 1, 3) for b in batches_of(draw(s2, e), bs)]
            assert before + after == full, (rank, stop)


def test_sampler_skip_is_one_shot_and_validated():
    s = ResumableSampler(12, batch_size=2)
    s.set_epoch(0)
    s.skip(2)
    assert len(list(s)) == 8 and len(list(s)) == 12
    with pytest.raises(ValueError, match="only 6 batches"):
        s.skip(7)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ResumableSampler(3, batch_size=2, world_size=2)


class EpochDataset(Dataset):
    """Returns (index, epoch): checks that InfiniteLoader forwards set_epoch to the dataset."""

    def __init__(self, n):
        self.n, self.epoch = n, -1

    def set_epoch(self, e):
        self.epoch = e

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([i, self.epoch])


def test_infinite_loader_resume_matches_and_sets_epoch():
    def make(start):
        ds = EpochDataset(14)
        sampler = ResumableSampler(len(ds), batch_size=4, seed=5)
        loader = DataLoader(ds, batch_size=4, sampler=sampler, drop_last=True, generator=torch.Generator())
        return InfiniteLoader(loader, start_iter=start)
    it = make(0)
    assert it.batches_per_epoch == 3
    full = [next(it).tolist() for _ in range(10)]
    assert [b[0][1] for b in full] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]  # dataset epoch follows
    assert it.epoch == 3 and it.iteration == 10
    for start in (1, 3, 4, 8):
        r = make(start)
        assert [next(r).tolist() for _ in range(10 - start)] == full[start:]


def test_infinite_loader_resume_with_sample_counting_sampler():
    def make(start):
        ds = EpochDataset(10)
        sampler = ResumableSampler(len(ds), seed=2)  # no batch_size: the loader's drop_last trims
        loader = DataLoader(ds, batch_size=3, sampler=sampler, drop_last=True, generator=torch.Generator())
        return InfiniteLoader(loader, start_iter=start)
    it = make(0)
    full = [next(it)[:, 0].tolist() for _ in range(7)]
    assert it.batches_per_epoch == 3
    assert [next(make(s))[:, 0].tolist() for s in (2, 4)] == [full[2], full[4]]


class PidEpochDataset(EpochDataset):
    """Returns (index, epoch, pid of the loading process)."""

    def __getitem__(self, i):
        return torch.tensor([i, self.epoch, os.getpid()])


def test_endless_sampler_persistent_workers_match_per_epoch_loader_and_resume():
    """Endless sampler + EpochKeyed + persistent workers: the same batches (items and their dataset epoch) as
    the per-epoch loader across epoch boundaries, one set of worker processes for all epochs, exact resume."""
    def per_epoch():
        ds = EpochDataset(14)
        loader = DataLoader(ds, batch_size=4, sampler=ResumableSampler(14, batch_size=4, seed=5), drop_last=True,
                            generator=torch.Generator())
        return InfiniteLoader(loader)

    def endless(start, workers=2):
        sampler = ResumableSampler(14, batch_size=4, seed=5, endless=True)
        loader = DataLoader(EpochKeyed(PidEpochDataset(14)), batch_size=4, sampler=sampler, drop_last=True,
                            num_workers=workers, persistent_workers=workers > 0, generator=torch.Generator())
        return InfiniteLoader(loader, start_iter=start)

    ref_it = per_epoch()
    ref = [next(ref_it).tolist() for _ in range(10)]           # 3 batches per epoch: epochs 0..3
    it = endless(0)
    got = [next(it) for _ in range(10)]
    assert [b[:, :2].tolist() for b in got] == ref
    assert it.epoch == 3 and it.iteration == 10 and it.batches_per_epoch == 3
    pids = {int(p) for b in got for p in b[:, 2]}
    assert len(pids) <= 2 and os.getpid() not in pids          # the same two workers served all four epochs
    first_iter = it._it
    next(it)
    assert it._it is first_iter                                # never re-created at an epoch boundary
    for start in (1, 3, 5):
        r = endless(start, workers=0)
        assert [next(r)[:, :2].tolist() for _ in range(10 - start)] == ref[start:]


def test_endless_sampler_needs_batches_and_epoch_keys():
    with pytest.raises(ValueError, match="endless=True needs a batch_size"):
        ResumableSampler(10, endless=True)
    with pytest.raises(ValueError, match="EpochKeyed"):
        InfiniteLoader(DataLoader(EpochDataset(8), batch_size=2, sampler=ResumableSampler(8, 2, endless=True)))


def test_infinite_loader_refuses_persistent_workers_with_set_epoch():
    ds = EpochDataset(8)
    loader = DataLoader(ds, batch_size=2, num_workers=1, persistent_workers=True)
    with pytest.raises(ValueError, match="persistent_workers"):
        InfiniteLoader(loader)


# --------------------------------------------------------------------------- non-finite guard
def test_nonfinite_guard_skips_and_raises():
    g = NonFiniteGuard(max_bad_steps=3)
    assert g.check(torch.tensor(1.0), 0)
    with pytest.warns(RuntimeWarning, match="iteration 1"):
        assert not g.check(torch.tensor(float("nan")), 1)
    with pytest.warns(RuntimeWarning, match="iteration 2"):
        assert not g.check(torch.tensor(float("inf")), 2)
    assert g.check(torch.tensor(0.5), 3) and g.bad_in_row == 0 and g.total_skipped == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not g.check(torch.tensor([1.0, float("nan")]), 4)
        assert not g.check(float("nan"), 5)
    with pytest.raises(TrainingDiverged, match="iteration 6.*3 in a row"):
        g.check(torch.tensor(float("nan")), 6)


# --------------------------------------------------------------------------- 2-process gloo DDP
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from sam2_train.engine.distributed import cleanup, init_distributed as initd
    info = initd(device="cpu", gpu_device=0, distributed="auto")
    assert info.rank == rank and info.world_size == world and info.is_main == (rank == 0)
    seed_everything(0, info.rank)  # different init per rank: DDP must broadcast rank 0's weights
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    ddp = wrap_ddp(model, info)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    guard = NonFiniteGuard(3)
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank
    skipped = 0
    for step in range(4):
        x, y = torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        if step == 2 and rank == 1:
            loss = loss * float("nan")  # only rank 1 diverges: both ranks must skip together
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok = guard.check(loss, step)
        if ok:
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            skipped += 1
    flat = torch.cat([p.detach().reshape(-1) for p in unwrap_model(ddp).parameters()])
    torch.save({"flat": flat, "skipped": skipped}, os.path.join(out_dir, f"rank{rank}.pt"))
    barrier()
    cleanup()


def test_ddp_gloo_two_ranks_identical_weights(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(world)]
    assert torch.equal(r[0]["flat"], r[1]["flat"])  # identical weights after 3 real steps
    assert r[0]["skipped"] == r[1]["skipped"] == 1
    # the weights moved from the initial (rank-0 seeded) ones
    seed_everything(0, 0)
    init = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    assert not torch.equal(torch.cat([p.detach().reshape(-1) for p in init.parameters()]), r[0]["flat"])


def test_enable_tf32_keeps_legacy_and_new_flags_readable():
    prev = torch.get_float32_matmul_precision()
    try:
        enable_tf32()
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # reading must not raise
    finally:
        torch.set_float32_matmul_precision(prev)


def test_nonfinite_weights_are_caught_in_the_next_sync_or_before_a_checkpoint():
    g = NonFiniteGuard(max_bad_steps=3)
    w = torch.nn.Parameter(torch.tensor([1e30, -2.0]))   # large but finite: no false alarm
    g.watch_weights([w], 1)
    assert g.check(torch.tensor(1.0), 2)
    g.watch_weights([w], 2)
    g.require_finite_weights()
    with torch.no_grad():
        w.mul_(1e10)                                       # overflow to inf
    g.watch_weights([w], 3)
    with pytest.raises(TrainingDiverged, match="non-finite weights after the update of iteration 3"):
        g.check(torch.tensor(1.0), 4)                     # the next step's sync reads it
    with torch.no_grad():
        w.fill_(float("nan"))
    g.watch_weights([w], 5)
    with pytest.raises(TrainingDiverged, match="iteration 5"):
        g.require_finite_weights()                        # before a checkpoint: one sync
    g.require_finite_weights()                             # nothing pending: no-op
