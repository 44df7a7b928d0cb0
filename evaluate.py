"""Evaluate a checkpoint of this project on whole volumes, without ground-truth prompts.

    python evaluate.py -ckpt logs/ACDC_SSS_.../checkpoints/best.pt -dataset acdc -data_path ./data/ACDC -split test
    python evaluate.py -ckpt logs/BHSD_SSS_.../checkpoints/best.pt -dataset bhsd -data_path ./data/bhsd -split test -save_pred

The model architecture comes from the checkpoint's config. Writes ``summary.json`` (same keys as training),
``cases.csv`` (one row per volume and class) and, with ``-save_pred``, the predicted label volumes
(``.h5`` with key ``prediction`` for ACDC-format data, ``.nii.gz`` on the input image's voxel grid and header for
NIfTI data)
into ``<log_dir>/eval_<run>_<split>_<timestamp>/``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

import numpy as np

import cfg
from dataset import DatasetError, build_datasets
from dataset.io import write_label_nifti
from sam2_train import runtime
from sam2_train.checkpoint import load_checkpoint, load_model_state
from sam2_train.evaluation import format_summary, write_case_rows
from sam2_train.run_dir import console, make_unique_dir, write_json_atomic
from sam2_train.sss_net import build_sss_net
from sam2_train.trainer import USER_ERRORS, validate


def parse(argv=None) -> argparse.Namespace:
    p = cfg.OneLineParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-ckpt", required=True, help="checkpoint written by train_2d.py / train_3d.py (best.pt, last.pt)")
    p.add_argument("-dataset", type=cfg.lower_choice(cfg.DATASETS), default=None, help="default: the checkpoint's")
    p.add_argument("-data_path", default=None, help="default: the checkpoint's")
    p.add_argument("-split", type=cfg.lower_choice(("val", "test")), default="test")
    p.add_argument("-protocol", type=cfg.lower_choice(("ssl4mis", "unimatch")), default=None,
                   help="ACDC resize rule (default: the checkpoint's)")
    p.add_argument("-weights", type=cfg.lower_choice(("auto", "ema", "student")), default="auto",
                   help="auto: the EMA teacher when the checkpoint has one (what validation selected on)")
    p.add_argument("-save_pred", type=cfg.str2bool, nargs="?", const=True, default=False, metavar="{0,1}")
    p.add_argument("-log_dir", default="logs")
    p.add_argument("-device", type=cfg.lower_choice(("auto", "cuda", "cpu")), default="auto")
    p.add_argument("-gpu_device", type=cfg.nonneg_int, default=0)
    p.add_argument("-amp", type=cfg.lower_choice(("auto", "bf16", "off")), default="auto")
    p.add_argument("-max_volumes", type=cfg.nonneg_int, default=0, help="first N volumes only (0 = all)")
    return p.parse_args(argv)


def prediction_writer(out_dir: str):
    """``save_pred(item, pred)``: a NIfTI image on the grid of the source NIfTI (same shape, voxel order and
    header, so it compares voxel-wise with the input and its label file); a NIfTI in the canonical (RAS)
    grid when only an affine is known; else h5 (key ``prediction``)."""
    os.makedirs(out_dir, exist_ok=True)

    def save(item: dict, pred: np.ndarray) -> None:
        source, affine = item.get("source"), item.get("affine")
        if source is not None:
            write_label_nifti(os.path.join(out_dir, f"{item['name']}.nii.gz"), pred, source)
        elif affine is not None:
            import nibabel as nib
            # (D,H,W) = (z,y,x) in the canonical orientation the loader produced -> (x,y,z) for NIfTI
            img = nib.Nifti1Image(np.ascontiguousarray(pred.transpose(2, 1, 0)).astype(np.uint16), np.asarray(affine))
            nib.save(img, os.path.join(out_dir, f"{item['name']}.nii.gz"))
        else:
            import h5py
            with h5py.File(os.path.join(out_dir, f"{item['name']}.h5"), "w") as f:
                f.create_dataset("prediction", data=pred.astype(np.uint8), compression="gzip")
    return save


def main(argv=None) -> int:
    opts = parse(argv)
    try:
        state = load_checkpoint(opts.ckpt)
        args = argparse.Namespace(**state["config"])
        for key in ("dataset", "data_path", "protocol"):
            if getattr(opts, key) is not None:
                setattr(args, key, getattr(opts, key))
        for key in ("device", "gpu_device", "amp"):
            setattr(args, key, getattr(opts, key))
        args.distributed = "none"
        args.hu_window = tuple(args.hu_window)
        args.dfe_levels = tuple(args.dfe_levels)
        script = args.script
        if script == "2d":
            from func_2d.pipeline import PIPELINE_2D as pipeline
        else:
            from func_3d.pipeline import PIPELINE_3D as pipeline
        saved_classes = list(args.class_names)
        splits = build_datasets(args, script)
        if list(splits.class_names) != saved_classes:
            raise DatasetError(f"{args.data_path}: classes {list(splits.class_names)} do not match the checkpoint's "
                               f"{saved_classes}")
        volumes = splits.require_test() if opts.split == "test" else splits.val

        dist = runtime.init_distributed(args)
        device = dist.device
        net = build_sss_net(args, len(saved_classes), device=device, sam_ckpt="none")
        use_ema = opts.weights == "ema" or (opts.weights == "auto" and state.get("ema") is not None)
        if use_ema and state.get("ema") is None:
            raise DatasetError(f"{opts.ckpt}: -weights ema, but the checkpoint has no EMA teacher")
        load_model_state(net, state["ema"]["module"] if use_ema else state["model"], strict=True)

        run_name = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(opts.ckpt)))) or "ckpt"
        stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
        out = make_unique_dir(os.path.join(opts.log_dir, f"eval_{run_name}_{opts.split}_{stamp}"))
        save = prediction_writer(os.path.join(out, "predictions")) if opts.save_pred else None
        res = validate(pipeline, net, volumes, saved_classes, args, device,
                       lambda: runtime.autocast(device, args.amp), split=opts.split, save_pred=save,
                       max_volumes=opts.max_volumes)
        summary = dict(res.summary, checkpoint=os.path.abspath(opts.ckpt), weights="ema" if use_ema else "student",
                       dataset=args.dataset, data_path=args.data_path)
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
