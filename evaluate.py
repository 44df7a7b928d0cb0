"""Evaluate a checkpoint of this project on whole volumes, without ground-truth prompts.

    python evaluate.py -ckpt logs/ACDC_SSS_.../checkpoints/best.pt -dataset acdc -data_path ./data/ACDC -split test
    python evaluate.py -ckpt logs/BHSD_SSS_.../checkpoints/best.pt -dataset bhsd -data_path ./data/bhsd -split test \
        -save_pred

The model architecture comes from the checkpoint's config. Writes ``summary.json`` (same keys as training),
``cases.csv`` (one row per volume and class) and, with ``-save_pred``, the predicted label volumes
(``.h5`` with key ``prediction`` for ACDC-format data, ``.nii.gz`` on the input image's voxel grid and header for
NIfTI data)
into ``<log_dir>/eval_<run>_<split>_<timestamp>/``.
"""
from __future__ import annotations

import datetime as dt
import os
import sys

from dataset import DatasetError, build_datasets
from dataset.check import check_volumes
from dataset.io import prediction_writer
from sam2_train.engine.checkpoint import load_checkpoint
from sam2_train.engine.errors import USER_ERRORS
from sam2_train.engine.run_dir import check_writable, console, make_unique_dir, write_json_atomic
from sam2_train.engine.settings import OneLineParser, add_device_flags, lower_choice, nonneg_int, str2bool
from sam2_train.evaluation.checkpoint_model import checkpoint_config, model_from_checkpoint
from sam2_train.evaluation.evaluate import evaluate_model
from sam2_train.evaluation.loop import format_summary, write_case_rows

INFER_MODES = ("coarse", "boxes", "pcsw", "student", "sam_refine")


def parse(argv=None):
    from dataset.registry import dataset_names
    p = OneLineParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-ckpt", required=True, help="checkpoint written by train_2d.py / train_3d.py (best.pt, last.pt)")
    p.add_argument("-dataset", type=lower_choice(dataset_names()), default=None, help="default: the checkpoint's")
    p.add_argument("-data_path", default=None, help="default: the checkpoint's")
    p.add_argument("-split", type=lower_choice(("val", "test")), default="test", metavar="{val,test}",
                   help="the volumes evaluated (default test)")
    p.add_argument("-protocol", type=lower_choice(("ssl4mis", "unimatch")), default=None,
                   help="ACDC resize rule (default: the checkpoint's)")
    p.add_argument("-weights", type=lower_choice(("auto", "ema", "student", "model")), default="auto",
                   help="auto: the EMA of the weights when the checkpoint has one (what validation selected on); "
                        "student (= model): the trained weights")
    p.add_argument("-infer", type=lower_choice(INFER_MODES), default=None,
                   help="SAM-2 student: coarse | boxes | pcsw; lightweight student: student | sam_refine "
                        "(default: the checkpoint's run)")
    p.add_argument("-save_pred", type=str2bool, nargs="?", const=True, default=False, metavar="{0,1}",
                   help="also write the predicted label volumes (.h5 for ACDC-format data, .nii.gz for NIfTI) "
                        "(default 0)")
    p.add_argument("-log_dir", default="logs", metavar="DIR",
                   help="outputs go to <log_dir>/eval_<run>_<split>_<timestamp>/ (default logs)")
    add_device_flags(p)
    p.add_argument("-sam_config", default=None,
                   help="SAM-2 config to build (a name or a yaml path you trust); default: the checkpoint's, "
                        "which must be a built-in config")
    p.add_argument("-sam_ckpt", default=None,
                   help="lightweight students, -infer sam_refine: the SAM-2 guide's weights (default: the "
                        "checkpoint's -sam_ckpt)")
    p.add_argument("-max_volumes", type=nonneg_int, default=0, help="first N volumes only (0 = all)")
    p.add_argument("-check_data", type=str2bool, nargs="?", const=True, default=True, metavar="{0,1}",
                   help="check the files of the evaluated volumes first (see python -m dataset.check)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    opts = parse(argv)
    try:
        check_writable(opts.log_dir, "-log_dir")   # before the checkpoint, the data and the model
        state = load_checkpoint(opts.ckpt)
        overrides = {"data": {"dataset": opts.dataset, "data_path": opts.data_path},
                     "infer": {"protocol": opts.protocol, "infer": opts.infer},
                     "model": {"sam_config": opts.sam_config, "sam_ckpt": opts.sam_ckpt}}
        config = checkpoint_config(state, opts.ckpt, overrides)
        saved_classes = list(config.data.class_names)
        splits = build_datasets(config.data, config.run.script, image_size=config.model.image_size,
                                seed=config.run.seed, unlabeled=False)
        if list(splits.class_names) != saved_classes:
            raise DatasetError(f"{config.data.data_path}: classes {list(splits.class_names)} do not match the "
                               f"checkpoint's {saved_classes}")
        volumes = splits.require_test() if opts.split == "test" else splits.val
        if opts.check_data:  # every evaluated file, before the model is built
            check_volumes({opts.split: [(r, True) for r in volumes.refs[:opts.max_volumes or None]]},
                          num_workers=config.run.num_workers)
        model = model_from_checkpoint(state, config, opts.ckpt, opts.weights, device=opts.device,
                                      gpu_device=opts.gpu_device, amp=opts.amp)

        run_name = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(opts.ckpt)))) or "ckpt"
        stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
        out = make_unique_dir(os.path.join(opts.log_dir, f"eval_{run_name}_{opts.split}_{stamp}"))
        save = prediction_writer(os.path.join(out, "predictions")) if opts.save_pred else None
        res = evaluate_model(model.network, model.net, volumes, config, infer=config.infer.infer, device=model.device,
                             autocast=model.autocast, split=opts.split, save_pred=save, max_volumes=opts.max_volumes,
                             guide=model.guide)
        summary = dict(res.summary, checkpoint=os.path.abspath(opts.ckpt), weights=model.weights,
                       dataset=config.data.dataset, data_path=config.data.data_path, method=config.semi.method)
        write_json_atomic(os.path.join(out, "summary.json"), summary)
        write_case_rows(os.path.join(out, "cases.csv"), res.rows)
        console(format_summary(summary, saved_classes))
        console(f"wrote {out}")
        return 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
