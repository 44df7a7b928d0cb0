"""The body of ``train_2d.py`` and ``train_3d.py``: flags -> datasets -> typed config -> ``Trainer.fit()``.

Bad input (data, checkpoints, flags that do not fit a checkpoint) ends the run with one line on stderr and
exit status 2; a run whose loss stays non-finite ends with status 3 (its last good checkpoint is kept).
"""
from __future__ import annotations

import sys

import cfg
from dataset import DatasetError, build_datasets
from dataset.check import check_before_training
from sam2_train.engine import runtime
from sam2_train.engine.checkpoint import CheckpointError, ConfigMismatchError
from sam2_train.engine.run_dir import RunLockedError
from sam2_train.engine.trainer import RunSetupError, Task, Trainer
from sam2_train.model.build import CheckpointMismatchError

USER_ERRORS = (DatasetError, FileNotFoundError, CheckpointError, CheckpointMismatchError, ConfigMismatchError,
               RunSetupError, RunLockedError)


def task_for(script: str, student: str = "sam2") -> Task:
    """The 2D (slices) or 3D (volumes) task of SAM-2, or the 2D task of a lightweight student (unet, unetpp)."""
    if student != "sam2":
        from func_2d.unet_step import TASK_UNET_2D
        return TASK_UNET_2D
    if script == "2d":
        from func_2d.step import TASK_2D
        return TASK_2D
    from func_3d.step import TASK_3D
    return TASK_3D


def record_of(args, splits) -> dict:
    """The flat config written to ``config.json`` and every checkpoint: the resolved flags, the classes and the
    intensity mapping of the data."""
    return {**vars(args), "class_names": list(splits.class_names), "num_classes": splits.num_classes,
            "intensity": splits.info.get("intensity")}  # how images were mapped to [0,1] (predict.py)


def main(argv, script: str) -> int:
    """Train with the flags ``argv`` for ``script`` ("2d" or "3d"); returns the process exit status."""
    args = cfg.parse_args(argv, script=script)
    try:
        dist = runtime.init_distributed(device=args.device, gpu_device=args.gpu_device, distributed=args.distributed)
        splits = build_datasets(cfg.data_conf(args), script)
        if args.check_data:   # every file the run reads, before training
            check_before_training(splits, unlabeled=args.method != "supervised", num_workers=args.num_workers,
                                  is_main=dist.is_main)
        config = cfg.to_config(args, splits.num_classes)
        return Trainer(config, task_for(script, args.student), splits, dist, record_of(args, splits)).fit()
    except USER_ERRORS as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except runtime.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        runtime.cleanup()
