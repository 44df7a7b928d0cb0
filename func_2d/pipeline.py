"""The 2D pipeline plugged into the shared training loop (``sam2_train.engine.trainer``)."""
from __future__ import annotations

from sam2_train.model.pcsw import PCSWConfig
from sam2_train.engine.trainer import Pipeline

from func_2d.predict import predict_volume
from func_2d.step import Student2D, train_step


def predict(net, image, spacing, args, device, autocast):
    """Label volume for one image volume (no label in sight)."""
    return predict_volume(net, image, device=device, autocast=autocast, cfg=PCSWConfig.from_args(args),
                          use_pcsw=bool(args.pcsw), protocol=args.protocol, chunk=max(8, args.b))


PIPELINE_2D = Pipeline(script="2d", make_student=Student2D, step=train_step, predict=predict,
                       unlabeled_batch=lambda args: max(1, args.b_u // args.slab_len))
