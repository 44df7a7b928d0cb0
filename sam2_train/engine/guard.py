"""The non-finite guard: skip a step whose loss or gradients are not finite, stop a run that keeps diverging
or whose weights became non-finite (:class:`NonFiniteGuard`, a collective under DDP)."""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.distributed as dist

from sam2_train.engine.distributed import is_dist

__all__ = ["TrainingDiverged", "NonFiniteGuard"]

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
