"""Memory and speed levers of the image encoder: activation checkpointing of the Hiera blocks
(``-grad_ckpt 1``) and ``torch.compile`` of the image encoder (``-compile 1``). (With a frozen encoder the
teacher's weak-view backbone pass also serves the student: :func:`sam2_train.methods.weak_to_strong.
student_strong_views`.)

- :func:`enable_grad_checkpointing` turns every Hiera block into a checkpointed one in place (the block's
  class becomes a subclass whose ``forward`` runs under :func:`torch.utils.checkpoint.checkpoint`, so the
  state-dict keys, the EMA deep copy and saved checkpoints are unchanged). A checkpointed block keeps only
  its input for backward and recomputes its activations there; it does so only when the module is in
  training mode and autograd is recording, so the EMA teacher, ``no_grad`` passes and evaluation run the
  plain block.
- :func:`compile_encoders` compiles the image encoders in place (``nn.Module.compile``: the state-dict keys
  stay the same) with a chosen backend (``"eager"`` for a quick CPU dry run).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ["enable_grad_checkpointing", "is_checkpointed", "compile_encoders"]


class _CheckpointedBlock:
    """Mixin placed before a block class: ``forward`` under activation checkpointing when it pays off."""

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            return checkpoint(super().forward, *args, use_reentrant=False, **kwargs)
        return super().forward(*args, **kwargs)


_CLASSES: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    if issubclass(cls, _CheckpointedBlock):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Checkpointed{cls.__name__}", (_CheckpointedBlock, cls), {"__module__": __name__})
    return _CLASSES[cls]


def enable_grad_checkpointing(image_encoder: nn.Module) -> int:
    """Checkpoint every block of the Hiera trunk of a SAM-2 ``image_encoder`` (in place). Returns the number
    of blocks. Raises ``ValueError`` when the encoder has no ``trunk.blocks``."""
    blocks = getattr(getattr(image_encoder, "trunk", None), "blocks", None)
    if blocks is None:
        raise ValueError(f"-grad_ckpt: {type(image_encoder).__name__} has no trunk.blocks (not a Hiera encoder)")
    for blk in blocks:
        blk.__class__ = _checkpointed_class(type(blk))
    return len(blocks)


def is_checkpointed(module: nn.Module) -> bool:
    return isinstance(module, _CheckpointedBlock)


def compile_encoders(*nets: nn.Module, backend: str = "inductor") -> int:
    """``-compile 1``: ``torch.compile`` the SAM-2 image encoder of each distinct network (an ``SSSNet``, maybe
    wrapped by DDP) in place with ``nn.Module.compile`` (``backend``; ``"eager"`` for a quick CPU dry run), so
    parameters and state-dict keys stay as they are (checkpoints and the EMA are unaffected). Call it after the
    EMA copy is made. Returns the number of encoders compiled."""
    from sam2_train.engine.distributed import unwrap_model
    done = set()
    for net in nets:
        encoder = unwrap_model(net).sam.sam.image_encoder
        if id(encoder) not in done:
            encoder.compile(backend=backend)
            done.add(id(encoder))
    return len(done)
