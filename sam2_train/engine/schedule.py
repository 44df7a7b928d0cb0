"""Optimiser and learning-rate schedule.

``build_optimizer``: AdamW over parameter groups: the image encoder (chosen by a name predicate) at
``lr * encoder_lr_mult``, the rest at ``lr``; no weight decay on biases, norm weights, 1-D parameters,
embeddings, tokens and positional encodings.
``build_scheduler``: LambdaLR with factor ``warm(it) * main(it)``, ``it`` = optimiser steps done
(``scheduler.step()`` once per step): ``main`` is poly ``(1 - it/total)^0.9``, cosine
``0.5 * (1 + cos(pi * it/total))`` or 1 (none); ``warm(it) = (it + 1) / (warmup_iters + 1)`` for
``it < warmup_iters``, else 1. Factors are clamped to ``it <= total``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["is_image_encoder", "default_no_decay", "build_param_groups", "build_optimizer",
           "lr_factor", "build_scheduler", "current_lrs"]

_NORM_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm,
               torch.nn.modules.instancenorm._InstanceNorm, torch.nn.LocalResponseNorm)
_NO_DECAY_WORDS = ("pos_embed", "pos_enc", "embed", "token", "no_mem", "no_obj", "cls_token",
                   "relative_position", "rel_pos", "gamma")


@dataclass(frozen=True)
class OptimConf:
    """AdamW and its schedule: ``lr`` (base), ``weight_decay``, ``encoder_lr_mult`` (image-encoder learning
    rate = lr x mult; 0 = frozen), ``sched`` (poly | cosine | none) with ``warmup_iters`` linear warm-up."""
    lr: float = 1e-4
    weight_decay: float = 1e-4
    encoder_lr_mult: float = 1.0
    sched: str = "poly"
    warmup_iters: int = 0


def is_image_encoder(name: str) -> bool:
    """SAM-2's image encoder (Hiera trunk + FPN neck) parameters: ``image_encoder.*``, also nested under
    a wrapper (``sam.image_encoder.*``)."""
    name = name.replace("_orig_mod.", "")
    return name.startswith("image_encoder.") or ".image_encoder." in name


def default_no_decay(name: str, param: torch.nn.Parameter, module: Optional[torch.nn.Module]) -> bool:
    """No weight decay for biases, 0-/1-D parameters, norms, embeddings and learned tokens/encodings."""
    if param.ndim <= 1 or name.endswith(".bias") or name == "bias":
        return True
    if module is not None and isinstance(module, _NORM_TYPES + (torch.nn.Embedding,)):
        return True
    leaf = name.rsplit(".", 1)[-1].lower()
    return any(w in leaf for w in _NO_DECAY_WORDS)


def build_param_groups(model: torch.nn.Module, lr: float, weight_decay: float, encoder_lr_mult: float = 1.0,
                       is_encoder: Callable[[str], bool] = is_image_encoder,
                       no_decay: Callable = default_no_decay) -> list[dict]:
    """Up to four groups ``{encoder, rest} x {decay, no_decay}`` of the trainable parameters, each with
    ``name``, ``lr``, ``weight_decay`` and ``lr_mult``. Empty groups are left out."""
    owner = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owner[f"{mname}.{pname}" if mname else pname] = mod
    groups: dict[tuple[bool, bool], list] = {}
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        key = (bool(is_encoder(name)), bool(no_decay(name, p, owner.get(name))))
        groups.setdefault(key, []).append(p)
    out = []
    for enc in (True, False):
        for nd in (False, True):
            params = groups.get((enc, nd))
            if not params:
                continue
            mult = encoder_lr_mult if enc else 1.0
            out.append({"params": params, "name": f"{'encoder' if enc else 'other'}_{'no_decay' if nd else 'decay'}",
                        "lr": lr * mult, "lr_mult": mult, "weight_decay": 0.0 if nd else weight_decay})
    if not out:
        raise ValueError("build_param_groups: the model has no trainable parameter")
    return out


def build_optimizer(model_or_groups, conf: OptimConf, is_encoder: Callable[[str], bool] = is_image_encoder,
                    betas=(0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW from ``conf``. Pass a model (groups are built by :func:`build_param_groups`) or ready parameter
    groups (used as given; missing ``lr``/``weight_decay`` take ``conf``'s). Fused kernel where the device has
    one, else foreach."""
    lr, wd = float(conf.lr), float(conf.weight_decay)
    if isinstance(model_or_groups, torch.nn.Module):
        groups = build_param_groups(model_or_groups, lr, wd, float(conf.encoder_lr_mult), is_encoder=is_encoder)
    else:
        groups = [dict(g) for g in model_or_groups]
        for g in groups:
            g["params"] = list(g["params"])
            g.setdefault("lr", lr)
            g.setdefault("weight_decay", wd)
    # The fused kernel exists for CUDA and CPU (torch >= 2.4); on CPU it is ~4x faster than the default
    # per-parameter loop and than foreach (measured: 40M parameters, 0.6 s vs 2.5 s per step on 2 cores).
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError):  # a device without a fused kernel
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, betas=betas, eps=eps, foreach=True)


def lr_factor(it: int, total_iters: int, sched: str = "poly", warmup_iters: int = 0, power: float = 0.9) -> float:
    """The learning-rate multiplier after ``it`` optimiser steps (see the module docstring)."""
    total = max(1, int(total_iters))
    progress = min(max(int(it), 0), total) / total
    if sched == "poly":
        main = (1.0 - progress) ** power
    elif sched == "cosine":
        main = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif sched == "none":
        main = 1.0
    else:
        raise ValueError(f"-sched must be poly, cosine or none, got {sched!r}")
    if warmup_iters > 0 and it < warmup_iters:
        main *= (it + 1) / (warmup_iters + 1)
    return main


def build_scheduler(optimizer: torch.optim.Optimizer, conf: OptimConf, total_iters: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR for ``conf.sched`` (with ``conf.warmup_iters``) over ``total_iters`` optimiser steps. Step it
    once per optimiser step. Its state dict round-trips (``last_epoch`` and learning rates; the lambda is
    rebuilt from the settings)."""
    if total_iters <= 0:
        raise ValueError(f"build_scheduler: total_iters must be > 0, got {total_iters}")
    sched, warmup_iters = conf.sched.lower(), int(conf.warmup_iters)
    lr_factor(0, total_iters, sched, warmup_iters)  # validate the name now

    def factor(it: int) -> float:
        return lr_factor(it, total_iters, sched, warmup_iters)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def current_lrs(optimizer: torch.optim.Optimizer) -> dict:
    """``{"lr/<group name>": lr}`` for logging."""
    return {f"lr/{g.get('name', i)}": float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
