"""The body of ``train_2d.py`` and ``train_3d.py``: flags -> typed config -> datasets -> ``Trainer.fit()``.

Bad input (data, checkpoints, flags that do not fit a checkpoint, an output folder that cannot be written) ends
the run with one line on stderr and exit status 2; a run whose loss stays non-finite ends with status 3 (its last
good checkpoint is kept); a checkpoint that cannot be written (a full disk) ends it with status 1, naming the last
good one; Ctrl-C stops at the end of the current iteration, saves ``last.pt`` and says how to resume (status 130;
a second Ctrl-C stops at once). The checkpoint of ``-resume`` (or ``-pretrain``) is opened and the folder the run
writes to is probed before the data is read and checked, so that these fail in a second.
"""
from __future__ import annotations

import sys

import cfg
from dataset import build_datasets
from dataset.check import check_before_training
from sam2_train.engine.checkpoint import CheckpointWriteError, validate_checkpoint
from sam2_train.engine.distributed import cleanup, init_distributed
from sam2_train.engine.errors import USER_ERRORS
from sam2_train.engine.guard import TrainingDiverged
from sam2_train.engine.run_dir import check_writable, run_path_of
from sam2_train.engine.trainer import Trainer, TrainingInterrupted
from sam2_train.methods.registry import method_class


def main(argv, script: str) -> int:
    """Train with the flags ``argv`` for ``script`` ("2d" or "3d"); returns the process exit status."""
    config = cfg.parse_config(argv, script=script)
    run = config.run
    try:
        # before any long work: the checkpoint the run starts from, and the folder it writes to
        if run.resume:
            validate_checkpoint(run.resume, resume=True)
            check_writable(run_path_of(run.resume), "-resume: the run directory")
        else:
            if run.pretrain:
                validate_checkpoint(run.pretrain)
            check_writable(run.log_dir, "-log_dir")
        dist = init_distributed(device=run.device, gpu_device=run.gpu_device, distributed=run.distributed)
        needs_unlabeled = method_class(config.semi.method, config.model.student, script).needs_unlabeled
        splits = build_datasets(config.data, script, image_size=config.model.image_size, seed=run.seed,
                                unlabeled=needs_unlabeled, needed_by=f"-method {config.semi.method}")
        if run.check_data:   # every file the run reads, before training
            check_before_training(splits, unlabeled=needs_unlabeled, num_workers=run.num_workers,
                                  is_main=dist.is_main)
        return Trainer(cfg.with_data(config, splits), splits, dist).fit()
    except USER_ERRORS as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except CheckpointWriteError as e:        # a full disk: the last good checkpoint is kept
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:        # Ctrl-C: last.pt saved at an iteration boundary
        print(f"\n{e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:               # a second Ctrl-C, or one before training started
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        cleanup()
