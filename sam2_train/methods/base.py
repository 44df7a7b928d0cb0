"""What every method is: one ``nn.Module`` whose ``forward(batch_l, batch_u, iteration)`` is the whole training
step (one DDP call), a nested frozen ``Conf`` holding its own settings only, and class attributes declaring what
the run must provide. The trainer (:class:`sam2_train.engine.trainer.Trainer`) reads nothing else of a method.

Declarations (class attributes):

* ``name`` (its ``-method``), ``students`` (the ``-student`` kinds it trains), ``scripts`` (``"2d"``/``"3d"``);
* ``needs_unlabeled``: the run needs unlabeled data; ``unlabeled_views``: the trainer feeds weak/strong views of
  it every step (False: the method feeds its own, e.g. one-time pseudo-labels via :meth:`on_iteration_start`);
* ``needs_guide``: a SAM-2 guide (:class:`sam2_train.model.sam_guide.SAMGuide`) is built and handed in;
* ``requires``: settings the method cannot change (``{"model.dfe": False}``), with ``requires_why``;
* :meth:`defaults`: its rules for settings the command line leaves out (e.g. a ramp over the budget).

Hooks: :meth:`on_iteration_start` (before a step), :meth:`extra_optimizers` (networks it trains outside the
DDP-wrapped student, stepped by the trainer), :meth:`extra_state` / :meth:`load_extra_state` (saved in every
checkpoint), :meth:`unlabeled_items` (unlabeled dataset items per step and process).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch.nn as nn

__all__ = ["Method", "rampup_weight", "lambda_u"]


class Method(nn.Module):
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    students: ClassVar[tuple[str, ...]] = ("sam2",)
    scripts: ClassVar[tuple[str, ...]] = ("2d",)
    needs_unlabeled: ClassVar[bool] = True
    unlabeled_views: ClassVar[bool] = True
    needs_guide: ClassVar[bool] = False
    requires: ClassVar[dict] = {}
    requires_why: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Conf:
        """The method's own settings (none)."""

    def __init__(self, net: nn.Module, config, *, teacher: nn.Module | None = None, guide=None,
                 autocast=contextlib.nullcontext):
        super().__init__()
        self.net, self.config, self.conf, self.semi, self.autocast = net, config, config.method, config.semi, autocast
        # held outside the module tree: never trained by this module's optimiser, saved or wrapped by DDP
        self._teacher, self._guide = (teacher if teacher is not None else net,), (guide,)

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    @property
    def guide(self):
        return self._guide[0]

    # ------------------------------------------------------------------ declarations read before the run
    @classmethod
    def defaults(cls, config) -> dict:
        """``{section: {field: value}}`` for settings not given on the command line (after the dataset's preset)."""
        return {}

    @classmethod
    def guide_trainable(cls, config) -> bool:
        """Whether the method fine-tunes its SAM-2 guide (the trainer then builds it trainable)."""
        return False

    @classmethod
    def unlabeled_items(cls, config) -> int:
        """Unlabeled dataset items per step and process."""
        return config.run.batch_size_u

    # ------------------------------------------------------------------ hooks of the training loop
    def on_iteration_start(self, loop, iteration: int) -> None:
        """Called before each step with the trainer (``loop``)."""

    def extra_optimizers(self) -> list:
        """Optimisers of what the method trains besides the student (stepped with it, gradients averaged)."""
        return []

    def extra_state(self) -> dict | None:
        """State saved in every checkpoint besides the student's (None: nothing)."""
        return None

    def load_extra_state(self, state: dict | None, source: str, with_optimizers: bool = True) -> None:
        """Restore :meth:`extra_state` from a checkpoint (``source`` names it in errors)."""


def rampup_weight(semi, iteration: int) -> float:
    """The sigmoid ramp-up of Laine & Aila at ``iteration``: exp(-5 (1 - t)^2), t = iteration / ``semi.rampup``
    (1 without a ramp)."""
    if semi.rampup <= 0:
        return 1.0
    t = min(iteration, semi.rampup) / semi.rampup
    return math.exp(-5.0 * (1.0 - t) ** 2)


def lambda_u(semi, iteration: int) -> float:
    """Unlabeled-loss weight at ``iteration``: ``semi.lambda_u`` times :func:`rampup_weight`."""
    return semi.lambda_u * rampup_weight(semi, iteration)
