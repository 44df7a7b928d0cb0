"""Memory and speed levers of the image encoder: activation checkpointing of the Hiera blocks
(``-grad_ckpt 1``), ``torch.compile`` of the image encoder (``-compile 1``), and whether the teacher's weak-view
encoder backbone pass can stand in for the student's (:func:`encoder_frozen`).

- :func:`enable_grad_checkpointing` turns every Hiera block into a checkpointed one in place (the block's
  class becomes a subclass whose ``forward`` runs under :func:`torch.utils.checkpoint.checkpoint`, so the
  state-dict keys, the EMA deep copy and saved checkpoints are unchanged). A checkpointed block keeps only
  its input for backward and recomputes its activations there; it does so only when the module is in
  training mode and autograd is recording, so the EMA teacher, ``no_grad`` passes and evaluation run the
  plain block.
- :func:`compile_encoder` compiles the image encoder in place (``nn.Module.compile``: the state-dict keys
  stay the same) with a chosen backend (the benchmarks' ``-compile 1``; ``"eager"`` for a quick CPU dry run).
  Call it after the EMA copy is made (the teacher keeps the eager encoder).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

__all__ = ["enable_grad_checkpointing", "is_checkpointed", "compile_encoder", "encoder_frozen", "apply_levers"]


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


def compile_encoder(image_encoder: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` the image encoder in place (state-dict keys unchanged); returns it."""
    image_encoder.compile(backend=backend)
    return image_encoder


def encoder_frozen(image_encoder: nn.Module) -> bool:
    """True when no parameter of the image encoder trains (``-encoder_lr_mult 0``). The EMA teacher then holds
    the student's Hiera trunk and FPN neck weights exactly (the EMA copies frozen parameters), so one weak-view
    backbone pass serves both; the mask decoder's conv_s0/conv_s1, which project feature levels 0 and 1 inside
    ``SAM2Base.forward_image``, are decoder parameters that train, so each network applies its own."""
    return not any(p.requires_grad for p in image_encoder.parameters())


def apply_levers(net: nn.Module, *, grad_ckpt: bool = False, compile: bool = False) -> nn.Module:
    """Apply ``-grad_ckpt`` / ``-compile`` to an SSSNet's image encoder (``net.sam.sam.image_encoder``)."""
    enc = net.sam.sam.image_encoder
    if grad_ckpt:
        enable_grad_checkpointing(enc)
    if compile:
        compile_encoder(enc)
    return net
