"""The 3D pipeline plugged into the shared training loop (``sam2_train.engine.trainer``)."""
from __future__ import annotations

from sam2_train.model.pcsw import PCSWConfig
from sam2_train.engine.trainer import Pipeline

from func_3d.predict import memory_dtype_for, predict_volume
from func_3d.step import Student3D, train_step


def predict(net, image, spacing, args, device, autocast):
    """Label volume for one image volume (no label in sight), streamed through SAM-2's memory."""
    return predict_volume(net, image, spacing, device=device, autocast=autocast, cfg=PCSWConfig.from_args(args),
                          use_pcsw=bool(args.pcsw), prompt_freq=args.prompt_freq, chunk=8,
                          memory_dtype=memory_dtype_for(device, autocast))


PIPELINE_3D = Pipeline(script="3d", make_student=Student3D, step=train_step, predict=predict,
                       unlabeled_batch=lambda args: args.b_u)
