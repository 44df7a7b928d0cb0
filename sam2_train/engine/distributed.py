"""Distributed training (torchrun / DDP; NCCL on CUDA, gloo on CPU): :func:`init_distributed` (every rank calls
it first: it selects the device), the DDP wrapper, collectives, and the wrappers' removal (:func:`unwrap_model`)."""
from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sam2_train.engine.device import env_int, select_device

__all__ = ["DistInfo", "is_dist", "get_rank", "get_world_size", "is_main_process", "init_distributed",
           "unwrap_model", "wrap_ddp", "average_gradients", "barrier", "cleanup"]

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
    env_world = env_int("WORLD_SIZE")
    env_rank = env_int("RANK")
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
    local_rank = env_int("LOCAL_RANK")
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


def cleanup() -> None:
    """Destroy the process group if there is one."""
    if is_dist():
        dist.destroy_process_group()
