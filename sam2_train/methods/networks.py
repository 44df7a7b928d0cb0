"""The trained networks (``-student``): how each is built and how it predicts a volume without labels.

``sam2`` is :class:`sam2_train.model.sss_net.SSSNet` (inference modes coarse / boxes / pcsw; slices in 2D, SAM-2
memory across slices in 3D); ``unet`` / ``unetpp`` are the lightweight MONAI students (student / sam_refine).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sam2_train.engine.config import SAM2_INFER, STUDENT_INFER
from sam2_train.engine.errors import UserError

__all__ = ["Network", "network"]


@dataclass(frozen=True)
class Network:
    """``build(model_conf, device, sam_ckpt)`` -> the network (``sam_ckpt``: ``"none"`` random weights;
    :data:`~sam2_train.model.build.WEIGHTS_FROM_CHECKPOINT`: none read, they come next from our checkpoint);
    ``predict(net, image, *, config, infer, device, autocast, guide)`` -> labels (D,H,W) from an image volume
    (D,H,W); ``infer_modes``: what ``predict`` can do (the final evaluation reports each)."""
    name: str
    build: Callable
    predict: Callable
    infer_modes: tuple[str, ...]


def _build_sam2(conf, device="cpu", sam_ckpt=None):
    from sam2_train.model.sss_net import build_sss_net
    return build_sss_net(conf, device=device, sam_ckpt=sam_ckpt)


def _predict_sam2(net, image, *, config, infer, device, autocast, guide=None):
    from sam2_train.evaluation.predict_sam2 import memory_dtype_for, predict_slices, predict_volume
    if config.run.script == "2d":
        return predict_slices(net, image, device=device, autocast=autocast, pcsw=config.pcsw, infer=infer,
                              protocol=config.infer.protocol, chunk=max(8, config.run.batch_size))
    return predict_volume(net, image, device=device, autocast=autocast, pcsw=config.pcsw, infer=infer,
                          prompt_freq=config.infer.prompt_freq, chunk=8,
                          memory_dtype=memory_dtype_for(device, autocast))


def _build_student(conf, device="cpu", sam_ckpt=None):
    from sam2_train.model.students import UNetStudent
    return UNetStudent(conf.student, conf.num_classes, conf.image_size).to(device)


def _predict_student(net, image, *, config, infer, device, autocast, guide=None):
    from sam2_train.evaluation.predict_student import predict_student
    return predict_student(net, image, config=config, infer=infer, device=device, autocast=autocast, guide=guide)


NETWORKS = {"sam2": Network("sam2", _build_sam2, _predict_sam2, SAM2_INFER),
            "unet": Network("unet", _build_student, _predict_student, STUDENT_INFER),
            "unetpp": Network("unetpp", _build_student, _predict_student, STUDENT_INFER)}


def network(name: str) -> Network:
    if name not in NETWORKS:
        raise UserError(f"-student {name}: unknown network (known: {', '.join(NETWORKS)})")
    return NETWORKS[name]
