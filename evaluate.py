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
from dataclasses import dataclass

import numpy as np

import cfg
from dataset import DatasetError, build_datasets
from dataset.check import check_volumes
from dataset.io import write_label_nifti
from run_training import USER_ERRORS, task_for
from sam2_train.engine import runtime
from sam2_train.engine.checkpoint import ConfigMismatchError, load_checkpoint, load_model_state
from sam2_train.engine.run_dir import console, make_unique_dir, write_json_atomic
from sam2_train.engine.trainer import evaluate_model, load_guide_state
from sam2_train.evaluation.loop import format_summary, write_case_rows
from sam2_train.engine.trusted_config import trusted_sam_config
from sam2_train.model.sam_guide import build_sam_guide


def parse(argv=None) -> argparse.Namespace:
    p = cfg.OneLineParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-ckpt", required=True, help="checkpoint written by train_2d.py / train_3d.py (best.pt, last.pt)")
    p.add_argument("-dataset", type=cfg.lower_choice(cfg.DATASETS), default=None, help="default: the checkpoint's")
    p.add_argument("-data_path", default=None, help="default: the checkpoint's")
    p.add_argument("-split", type=cfg.lower_choice(("val", "test")), default="test")
    p.add_argument("-protocol", type=cfg.lower_choice(("ssl4mis", "unimatch")), default=None,
                   help="ACDC resize rule (default: the checkpoint's)")
    p.add_argument("-weights", type=cfg.lower_choice(("auto", "ema", "student", "model")), default="auto",
                   help="auto: the EMA of the weights when the checkpoint has one (what validation selected on); "
                        "student (= model): the trained weights")
    p.add_argument("-infer", type=cfg.lower_choice(cfg.INFER_MODES), default=None,
                   help="SAM-2 student: coarse | boxes | pcsw; lightweight student: student | sam_refine "
                        "(default: the checkpoint's run)")
    p.add_argument("-save_pred", type=cfg.str2bool, nargs="?", const=True, default=False, metavar="{0,1}")
    p.add_argument("-log_dir", default="logs")
    p.add_argument("-device", type=cfg.lower_choice(("auto", "cuda", "cpu")), default="auto")
    p.add_argument("-gpu_device", type=cfg.nonneg_int, default=0)
    p.add_argument("-amp", type=cfg.lower_choice(("auto", "bf16", "off")), default="auto")
    p.add_argument("-sam_config", default=None,
                   help="SAM-2 config to build (a name or a yaml path you trust); default: the checkpoint's, "
                        "which must be a built-in config")
    p.add_argument("-sam_ckpt", default=None,
                   help="lightweight students, -infer sam_refine: the frozen SAM-2's weights (default: the "
                        "checkpoint's -sam_ckpt)")
    p.add_argument("-max_volumes", type=cfg.nonneg_int, default=0, help="first N volumes only (0 = all)")
    p.add_argument("-check_data", type=cfg.str2bool, nargs="?", const=True, default=True, metavar="{0,1}",
                   help="check the files of the evaluated volumes first (see python -m dataset.check)")
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


@dataclass
class LoadedModel:
    """A checkpoint's network, ready for label-free inference."""
    net: object                 # SSSNet in eval mode, on ``device``
    args: argparse.Namespace    # the checkpoint's flags with the overrides applied
    config: object              # the typed config (cfg.to_config) of those flags
    device: object              # torch.device
    weights: str                # "ema" or "student"
    guide: object = None        # the frozen SAM-2 of a lightweight student (-infer sam_refine)

    @property
    def task(self):
        return task_for(self.args.script, self.args.student)

    def predictor(self):
        """``predict(image (D,H,W) f32 [0,1], spacing) -> labels (D,H,W)``: the evaluation loop's predictor."""
        task, autocast = self.task, lambda: runtime.autocast(self.device, self.args.amp)
        extra = {"guide": self.guide} if self.guide is not None else {}
        return lambda image, spacing: task.predict(self.net, image, config=self.config, infer=self.args.infer,
                                                   device=self.device, autocast=autocast, **extra)


def checkpoint_args(state: dict, ckpt: str, overrides: dict | None = None, *, device: str = "auto",
                    gpu_device: int = 0, amp: str = "auto") -> argparse.Namespace:
    """The flags a checkpoint was trained with, with ``overrides`` (None values ignored) applied. A
    ``sam_config`` not overridden must be a built-in config (a checkpoint cannot name a yaml to run)."""
    args = argparse.Namespace(**{**vars(cfg.build_parser().parse_args([])), "student": "sam2", **state["config"]})
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(args, key, value)
    if not (overrides or {}).get("sam_config"):
        args.sam_config = trusted_sam_config(args.sam_config, ckpt)
    args.device, args.gpu_device, args.amp, args.distributed = device, gpu_device, amp, "none"
    args.hu_window = tuple(args.hu_window)
    args.dfe_levels = tuple(args.dfe_levels)
    for key, old in (("guide_size", args.image_size), ("optim", "adamw"), ("clip_grad", 1.0), ("sam_start", 0),
                     ("guide_train", False)):     # a checkpoint from before these flags existed
        if getattr(args, key, None) is None:
            setattr(args, key, old)
    if getattr(args, "infer", None) is None:  # a checkpoint from before -infer existed
        args.infer = "pcsw" if args.pcsw else "boxes"
    return args


def load_model(ckpt: str, *, weights: str = "auto", device: str = "auto", gpu_device: int = 0, amp: str = "auto",
               overrides: dict | None = None) -> LoadedModel:
    """Build the network of checkpoint ``ckpt`` from its config and load its weights (strict).

    ``weights``: ``auto`` (the EMA of the weights when the checkpoint has one, what validation selected on),
    ``ema`` (an error without one) or ``student``/``model``. ``overrides``: config keys to replace (None values
    are ignored), e.g. ``infer``."""
    state = load_checkpoint(ckpt)
    args = checkpoint_args(state, ckpt, overrides, device=device, gpu_device=gpu_device, amp=amp)
    return model_from_checkpoint(state, args, ckpt, weights)


def model_from_checkpoint(state: dict, args: argparse.Namespace, ckpt: str, weights: str = "auto") -> LoadedModel:
    """The network of a loaded checkpoint ``state`` (read from ``ckpt``) built with ``args``
    (:func:`checkpoint_args`), its ``weights`` loaded (see :func:`load_model`)."""
    problem = cfg.student_method_error(args)
    if problem:
        raise ConfigMismatchError(f"{ckpt}: {problem}")
    config = cfg.to_config(args, len(args.class_names))
    dev = runtime.init_distributed(device=args.device, gpu_device=args.gpu_device, distributed="none").device
    task = task_for(args.script, args.student)
    net = task.build_net(config.model, device=dev, sam_ckpt="none")
    use_ema = weights == "ema" or (weights == "auto" and state.get("ema") is not None)
    if use_ema and state.get("ema") is None:
        raise DatasetError(f"{ckpt}: -weights ema, but the checkpoint has no EMA of the weights")
    load_model_state(net, state["ema"]["module"] if use_ema else state["model"], strict=True)
    net.eval()
    m = config.model
    guide = (build_sam_guide(m.sam_config, m.sam_ckpt, getattr(m, "guide_size", 1024), dev,
                             lambda: runtime.autocast(dev, args.amp))
             if args.infer == "sam_refine" else None)
    if guide is not None and state.get("guide"):   # SAM-Match's fine-tuned SAM-2 (-guide_train 1)
        load_guide_state(guide, state, ckpt)
    return LoadedModel(net=net, args=args, config=config, device=dev, weights="ema" if use_ema else "student",
                       guide=guide)


def main(argv=None) -> int:
    opts = parse(argv)
    try:
        state = load_checkpoint(opts.ckpt)
        overrides = {key: getattr(opts, key) for key in ("dataset", "data_path", "protocol", "infer", "sam_config",
                                                         "sam_ckpt")}
        args = checkpoint_args(state, opts.ckpt, overrides, device=opts.device, gpu_device=opts.gpu_device,
                               amp=opts.amp)
        saved_classes = list(args.class_names)
        splits = build_datasets(cfg.data_conf(args), args.script)
        if list(splits.class_names) != saved_classes:
            raise DatasetError(f"{args.data_path}: classes {list(splits.class_names)} do not match the checkpoint's "
                               f"{saved_classes}")
        volumes = splits.require_test() if opts.split == "test" else splits.val
        if opts.check_data:  # every evaluated file, before the model is built
            check_volumes({opts.split: [(r, True) for r in volumes.refs[:opts.max_volumes or None]]},
                          num_workers=int(getattr(args, "num_workers", 0) or 0))
        model = model_from_checkpoint(state, args, opts.ckpt, opts.weights)
        device, net = model.device, model.net

        run_name = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(opts.ckpt)))) or "ckpt"
        stamp = f"{dt.datetime.now():%Y%m%d-%H%M%S}"
        out = make_unique_dir(os.path.join(opts.log_dir, f"eval_{run_name}_{opts.split}_{stamp}"))
        save = prediction_writer(os.path.join(out, "predictions")) if opts.save_pred else None
        res = evaluate_model(model.task, net, volumes, saved_classes, model.config, infer=args.infer,
                             device=device, autocast=lambda: runtime.autocast(device, args.amp), split=opts.split,
                             save_pred=save, max_volumes=opts.max_volumes, guide=model.guide)
        summary = dict(res.summary, checkpoint=os.path.abspath(opts.ckpt), weights=model.weights,
                       dataset=args.dataset, data_path=args.data_path, method=args.method)
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
