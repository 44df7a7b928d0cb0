"""The 2D pipeline plugged into the shared training loop (``sam2_train.trainer``)."""
from __future__ import annotations

from sam2_train.pcsw import PCSWConfig
from sam2_train.trainer import Pipeline

from func_2d.evaluate import predict_volume
from func_2d.train_step import Student2D, train_step


def predict(net, image, spacing, args, device, autocast):
    """Label volume for one image volume (no label in sight)."""
    return predict_volume(net, image, device=device, autocast=autocast, cfg=PCSWConfig.from_args(args),
                          use_pcsw=bool(args.pcsw), protocol=args.protocol, chunk=max(8, args.b))


def unlabeled_slabs(args) -> int:
    """Unlabeled slabs per step: ``-b_u`` slices in slabs of ``-slab_len``, at least two, so that CutMix
    always pastes from another slab (the loader draws the slabs of a step from distinct volumes)."""
    return max(2, args.b_u // args.slab_len)


PIPELINE_2D = Pipeline(script="2d", make_student=Student2D, step=train_step, predict=predict,
                       unlabeled_batch=unlabeled_slabs)
