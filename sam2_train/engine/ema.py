"""Exponential moving average (EMA) teacher of a model.

``ModelEMA(model, decay)`` keeps a frozen copy (``requires_grad=False``, eval mode: dropout off) and after
each optimiser step ``update(model)`` does ``ema = d * ema + (1 - d) * student`` on the floating-point
parameters with two ``torch._foreach_*`` calls, and copies the buffers (BatchNorm statistics etc.).
Parameters the student does not train (``requires_grad=False``, e.g. a frozen image encoder) are constant
in training: the first update copies them (the student may have changed since the EMA was made, e.g. DDP
broadcasts rank 0's weights) and later updates skip them.
With ``warmup=True`` the decay of update ``k`` (0-based) is ``min(decay, 1 - 1/(k + 1))``: the first update
copies the student, later ones average over the ~k updates seen so far until ``decay`` takes over.
DDP / ``torch.compile`` wrappers of the student are stripped (``.module`` / ``._orig_mod``).

Not ``torch.optim.swa_utils.AveragedModel``: its ``update_parameters`` tests its step counter on the host
(``bool(n_averaged == 0)``) and copies it to the device with a blocking copy on every call (a host sync per
training step on CUDA), averages frozen parameters too (the whole image encoder when it is frozen), and
``get_ema_multi_avg_fn`` has no warm-up.
"""
from __future__ import annotations

import copy

import torch

from sam2_train.engine.distributed import unwrap_model

__all__ = ["ModelEMA"]


class ModelEMA:
    def __init__(self, model: torch.nn.Module, decay: float = 0.99, warmup: bool = True):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.step = 0  # number of updates done
        self.module = copy.deepcopy(unwrap_model(model))
        self.module.eval()
        self.module.requires_grad_(False)
        self._ema_params = [p for n, p in self.module.named_parameters() if p.is_floating_point()]
        self._ema_buffers = [b for _, b in self.module.named_buffers()]

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if self.warmup:
            return min(self.decay, 1.0 - 1.0 / (self.step + 1))
        return self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> float:
        """One EMA step towards ``model`` (the student; wrappers allowed). Returns the decay used."""
        src = unwrap_model(model)
        src_params = [p for p in src.parameters() if p.is_floating_point()]
        if len(src_params) != len(self._ema_params):
            raise ValueError(f"ModelEMA.update: the student has {len(src_params)} floating-point parameters, "
                             f"the EMA copy {len(self._ema_params)}: not the same architecture")
        d = self.current_decay()
        trained = [(e, p.detach()) for e, p in zip(self._ema_params, src_params) if p.requires_grad]
        if self.step == 0:
            frozen = [(e, p.detach()) for e, p in zip(self._ema_params, src_params) if not p.requires_grad]
            if frozen:
                torch._foreach_copy_(*map(list, zip(*frozen)))
        if trained:
            ema_params, src_data = map(list, zip(*trained))
            torch._foreach_mul_(ema_params, d)
            torch._foreach_add_(ema_params, src_data, alpha=1.0 - d)
        src_buffers = list(src.buffers())
        if len(src_buffers) != len(self._ema_buffers):
            raise ValueError("ModelEMA.update: the student's buffers do not match the EMA copy's")
        if src_buffers:
            torch._foreach_copy_(self._ema_buffers, src_buffers)
        self.step += 1
        return d

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> "ModelEMA":
        """The teacher always stays in eval mode; this is a no-op kept for loop code that toggles modes."""
        return self

    def to(self, *args, **kwargs) -> "ModelEMA":
        self.module.to(*args, **kwargs)
        # .to() on a module keeps Parameter objects but may replace their data: refresh the lists
        self._ema_params = [p for p in self.module.parameters() if p.is_floating_point()]
        self._ema_buffers = list(self.module.buffers())
        return self

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "step": self.step, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"], strict=True)
        self.step = int(state.get("step", 0))
        # the decay of the current run (flag) wins over the saved one; keep the saved step count
        self.module.eval()
