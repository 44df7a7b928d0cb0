"""Command-line configuration shared by ``train_2d.py``, ``train_3d.py`` and ``evaluate.py``.

One parser, ``parse_args(argv=None, script="2d")``. The seed flags of the SSS / Medical-SAM2 README keep
their single-dash spelling; the flags this project adds are grouped by what they control. Values that
depend on the dataset (image size, model, data path, ...) default to ``None`` in the parser and are filled
in by :func:`resolve_defaults`, so ``python train_2d.py -dataset demo`` needs no other flag while the
paper commands keep the paper's settings.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from sam2_train.model.build import CKPT_FILES, SAM_CONFIG_NAMES

DATASETS = ("acdc", "bhsd", "custom", "demo")
METHODS = ("supervised", "fixmatch", "sss")

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value: 0/1/true/false/yes/no/on/off (case-insensitive)."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (0/1/true/false), got {value!r}")


def lower_choice(choices: Sequence[str]):
    """Case-insensitive choice type: ``-dataset ACDC`` and ``-dataset acdc`` are the same."""
    def parse(value: str) -> str:
        v = value.strip().lower()
        if v not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid value {value!r} (allowed: {', '.join(choices)})")
        return v
    return parse


def _int_at_least(minimum: int, what: str):
    def parse(value: str) -> int:
        try:
            v = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return v
    return parse


positive_int = _int_at_least(1, "a positive integer")
nonneg_int = _int_at_least(0, "an integer >= 0")


def unit_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}")
    return v


def image_size(value: str) -> int:
    v = positive_int(value)
    if v % 32:
        raise argparse.ArgumentTypeError(
            f"-image_size must be a multiple of 32 (SAM-2's Hiera needs it), got {v}")
    return v


def float_pair(value: str) -> tuple[float, float]:
    parts = value.replace(":", ",").split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers 'LOW,HIGH', got {value!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LOW < HIGH, got {value!r}")
    return lo, hi


def int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in value.split(",") if p.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump), exit status 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        message = message.replace("\n", " ")
        self.exit(2, f"{self.prog}: error: {message}\n")


def _bool_flag(group, name: str, default: bool, help: str):
    # ``-vis`` alone means on, ``-vis 1``/``-vis true`` too; omitting the flag means ``default``.
    group.add_argument(name, type=str2bool, nargs="?", const=True, default=default,
                       metavar="{0,1}", help=help)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = OneLineParser(prog=prog, description="SSS: semi-supervised SAM-2 for medical image segmentation.")

    g = p.add_argument_group("seed flags (SSS / Medical-SAM2 README)")
    g.add_argument("-net", type=lower_choice(("sam2",)), default="sam2", help="network family (only sam2)")
    g.add_argument("-exp_name", type=str, default=None, help="run name; outputs go to <log_dir>/<exp_name>_<timestamp>/")
    _bool_flag(g, "-vis", False, "write PNG overlays of validation predictions")
    _bool_flag(g, "-train_vis", False, "write PNG overlays of training batches")
    g.add_argument("-prompt", type=lower_choice(("bbox", "click")), default="bbox",
                   help="3D: ground-truth prompt type on labeled clips")
    g.add_argument("-prompt_freq", type=positive_int, default=2,
                   help="3D: prompt every k-th frame of a labeled training clip; PCSW prompts (teacher, "
                        "inference): every k-th of each class's prompted slices")
    g.add_argument("-pretrain", type=str, default=None,
                   help="initialise from a checkpoint of this project (strict load) before training")
    g.add_argument("-val_freq", type=positive_int, default=None, help="validate every N epochs (default 1; 3D demo 5)")
    g.add_argument("-gpu_device", type=nonneg_int, default=0, help="CUDA device index (single-process runs)")
    g.add_argument("-image_size", type=image_size, default=None,
                   help="model input size, a multiple of 32 (default 1024; demo 128)")
    g.add_argument("-out_size", type=positive_int, default=None,
                   help="size at which labeled mask losses are computed (default: image_size)")
    g.add_argument("-distributed", type=lower_choice(("none", "auto", "ddp")), default="auto",
                   help="auto: DDP when launched by torchrun, else single process")
    g.add_argument("-dataset", type=lower_choice(DATASETS), default="demo", help=f"one of {', '.join(DATASETS)}")
    g.add_argument("-sam_ckpt", type=str, default=None,
                   help="SAM-2 checkpoint path, or 'none' for random init (default: none on demo, "
                        "./checkpoints/<file matching -sam_config> otherwise)")
    g.add_argument("-sam_config", type=str, default=None,
                   help=f"one of {', '.join(SAM_CONFIG_NAMES)} or a yaml path (default sam2_hiera_s; demo sam2_hiera_t)")
    g.add_argument("-video_length", type=positive_int, default=None,
                   help="3D: training clip length in slices (default 8)")
    g.add_argument("-b", type=positive_int, default=None,
                   help="labeled batch: 2D slices (default 4) / 3D clips (default 1)")
    g.add_argument("-lr", type=float, default=None, help="base learning rate (default 1e-4; demo 1e-3)")
    g.add_argument("-memory_bank_size", type=positive_int, default=16,
                   help="3D: most prompted (conditioning) frames kept in SAM-2's memory bank")
    g.add_argument("-data_path", type=str, default=None, help="dataset root (default ./data/<dataset>)")

    g = p.add_argument_group("run")
    g.add_argument("-device", type=lower_choice(("auto", "cuda", "cpu")), default="auto")
    g.add_argument("-amp", type=lower_choice(("auto", "bf16", "off")), default="auto",
                   help="auto = bf16 autocast on CUDA, off on CPU")
    g.add_argument("-seed", type=int, default=0)
    g.add_argument("-epochs", type=positive_int, default=None, help="training epochs (default 100; demo: see -max_iters)")
    g.add_argument("-max_iters", type=nonneg_int, default=None,
                   help="stop after this many iterations (0 = run all epochs)")
    g.add_argument("-resume", type=str, default=None, help="continue the run saved in this checkpoint (last.pt)")
    g.add_argument("-num_workers", type=nonneg_int, default=None, help="DataLoader workers (default min(8, cpus))")
    g.add_argument("-log_dir", type=str, default="logs")
    g.add_argument("-log_freq", type=positive_int, default=20, help="log scalars every N iterations")
    g.add_argument("-save_freq", type=nonneg_int, default=200,
                   help="also write last.pt every N iterations (0 = only at validation)")
    g.add_argument("-max_bad_steps", type=positive_int, default=5,
                   help="stop after this many non-finite losses in a row (each is skipped)")
    _bool_flag(g, "-compile", False, "torch.compile the image encoder")
    _bool_flag(g, "-grad_ckpt", False, "activation checkpointing of the Hiera blocks: less memory, the "
               "encoder forward recomputed in backward")
    g.add_argument("-val_volumes", type=nonneg_int, default=None,
                   help="periodic validation on the first N volumes only (0 = all; default 0, 3D demo 2); "
                        "the final evaluation always uses every volume")

    g = p.add_argument_group("data")
    g.add_argument("-labeled_num", type=positive_int, default=None,
                   help="ACDC: labeled cases (1, 3, 7, ...; default 3); BHSD/custom: labeled volumes (default: "
                        "BHSD 96, the whole training half; custom 1); demo: 2 patients (2D) / all 6 training "
                        "volumes (3D)")
    g.add_argument("-labeled_ratio", type=unit_float, default=None,
                   help="BHSD/custom: labeled fraction of the training volumes (overrides -labeled_num)")
    g.add_argument("-b_u", type=positive_int, default=None,
                   help="2D: unlabeled slices per step (default = -b); 3D: unlabeled clips (default 1)")
    g.add_argument("-slab_len", type=positive_int, default=4,
                   help="2D: unlabeled slices come as slabs of this many consecutive slices (PCSW needs neighbours)")
    g.add_argument("-hu_window", type=float_pair, default=(0.0, 80.0), help="CT window in HU, 'LOW,HIGH'")
    g.add_argument("-class_names", type=str, default=None,
                   help="custom: comma-separated foreground class names, label 1 first")
    g.add_argument("-protocol", type=lower_choice(("ssl4mis", "unimatch")), default="ssl4mis",
                   help="ACDC evaluation protocol (nearest-resized argmax vs bilinear logits)")

    g = p.add_argument_group("method")
    g.add_argument("-method", type=lower_choice(METHODS), default="sss")
    g.add_argument("-dfe", type=str2bool, default=True, metavar="{0,1}", help="discriminative feature enhancement")
    g.add_argument("-pcsw", type=str2bool, default=True, metavar="{0,1}", help="PCSW prompts (0: unconstrained coarse boxes)")
    g.add_argument("-ema", type=unit_float, default=0.99, help="EMA teacher decay (0 = the student is its own teacher)")
    g.add_argument("-lambda_u", type=float, default=1.0, help="weight of the unlabeled loss")
    g.add_argument("-rampup", type=nonneg_int, default=None,
                   help="sigmoid ramp-up of lambda_u over N iterations (default 0; 3D demo 100)")
    g.add_argument("-tau_u", type=unit_float, default=0.95, help="pseudo-label confidence threshold")
    g.add_argument("-p_gt", type=unit_float, default=0.5,
                   help="labeled images: probability of a (jittered) ground-truth box prompt instead of PCSW")
    _bool_flag(g, "-unsup_encoder_grad", False, "let the unlabeled loss back-propagate into the image encoder")
    g.add_argument("-sched", type=lower_choice(("poly", "cosine", "none")), default="poly")
    g.add_argument("-warmup_iters", type=nonneg_int, default=0, help="linear learning-rate warm-up iterations")
    g.add_argument("-weight_decay", type=float, default=1e-4)
    g.add_argument("-encoder_lr_mult", type=float, default=None,
                   help="learning-rate multiplier of the image encoder; 0 freezes it (no backward through it). "
                        "Default 1; demo 0: a randomly initialised Hiera does not train from scratch in minutes")
    g.add_argument("-cutmix_p", type=unit_float, default=0.5, help="probability of CutMix per strong view")

    g = p.add_argument_group("DFE")
    g.add_argument("-dfe_sim", type=lower_choice(("pixel", "global")), default="pixel",
                   help="similarity per pixel, or pooled per image (authors' sketch)")
    g.add_argument("-dfe_levels", type=int_list, default=(0, 1, 2), help="feature levels (0 = 1/4, 2 = 1/16)")

    g = p.add_argument_group("PCSW")
    g.add_argument("-pcsw_thresh", type=unit_float, default=0.5, help="binarisation threshold on class probability")
    g.add_argument("-pcsw_tau", type=unit_float, default=0.8, help="continuity threshold C >= tau")
    g.add_argument("-pcsw_tau_conf", type=unit_float, default=0.6, help="minimum mean confidence of a component")
    g.add_argument("-pcsw_min_len", type=positive_int, default=2, help="shortest window N_min (slices)")
    g.add_argument("-pcsw_max_len", type=nonneg_int, default=0, help="longest window N_max (0 = whole slab)")
    g.add_argument("-pcsw_min_voxels", type=nonneg_int, default=4, help="smallest component, in coarse-map voxels")
    g.add_argument("-pcsw_min_area", type=unit_float, default=0.0, help="smallest per-slice area, fraction of the slice")
    g.add_argument("-pcsw_max_area", type=unit_float, default=0.5, help="largest per-slice area, fraction of the slice")
    g.add_argument("-pcsw_margin", type=nonneg_int, default=2, help="box margin in coarse-map pixels")
    g.add_argument("-pcsw_select", type=lower_choice(("longest", "continuity")), default="longest",
                   help="accepted window: the longest with C >= tau, or the one with the highest C")
    return p


# Dataset-dependent defaults: (2D, 3D) where they differ.
_DEFAULTS = {
    "demo": dict(image_size=128, sam_config="sam2_hiera_t", sam_ckpt="none", lr=1e-3, epochs=None,
                 max_iters=300, video_length=8, b=(4, 1), exp_name="demo", val_freq=(1, 5),
                 val_volumes=(0, 2), encoder_lr_mult=0.0, rampup=(0, 100)),
    "acdc": dict(image_size=1024, sam_config="sam2_hiera_s", sam_ckpt=None, lr=1e-4,
                 epochs=100, max_iters=0, video_length=8, b=(4, 1), exp_name="ACDC", val_freq=1, val_volumes=0,
                 encoder_lr_mult=1.0, rampup=0),
    "bhsd": dict(image_size=1024, sam_config="sam2_hiera_s", sam_ckpt=None, lr=1e-4,
                 epochs=100, max_iters=0, video_length=8, b=(4, 1), exp_name="BHSD", val_freq=1, val_volumes=0,
                 encoder_lr_mult=1.0, rampup=0),
    "custom": dict(image_size=1024, sam_config="sam2_hiera_s", sam_ckpt=None, lr=1e-4,
                   epochs=100, max_iters=0, video_length=8, b=(4, 1), exp_name="custom", val_freq=1,
                   val_volumes=0, encoder_lr_mult=1.0, rampup=0),
}


def resolve_defaults(args: argparse.Namespace, script: str) -> argparse.Namespace:
    """Fill the ``None`` defaults from the dataset and the script ("2d" or "3d")."""
    d = _DEFAULTS[args.dataset]
    pick = (lambda v: v[0] if script == "2d" else v[1])

    def fill(name, value):
        if getattr(args, name) is None:
            setattr(args, name, pick(value) if isinstance(value, tuple) else value)

    for name in ("image_size", "sam_config", "lr", "epochs", "max_iters", "video_length", "b", "exp_name",
                 "val_freq", "val_volumes", "encoder_lr_mult", "rampup"):
        fill(name, d[name])
    if args.epochs is None:  # demo: the run length is set by -max_iters
        args.epochs = 1000
    if args.sam_ckpt is None:
        args.sam_ckpt = d["sam_ckpt"] or os.path.join(
            "checkpoints", CKPT_FILES.get(args.sam_config, "<checkpoint matching -sam_config>"))
    if args.out_size is None:
        args.out_size = args.image_size
    if args.data_path is None:
        args.data_path = os.path.join("data", f"demo_{'acdc' if script == '2d' else 'bhsd'}"
                                      if args.dataset == "demo" else args.dataset.upper()
                                      if args.dataset == "acdc" else args.dataset)
    fill("labeled_num", {"acdc": 3, "demo": (2, 6), "bhsd": 96, "custom": 1}[args.dataset])
    if args.b_u is None:
        args.b_u = args.b if script == "2d" else 1
    if args.num_workers is None:
        args.num_workers = min(8, os.cpu_count() or 1)
    if args.method != "sss":  # DFE and PCSW are parts of SSS; the baselines run without them.
        args.dfe, args.pcsw = False, False
    args.script = script
    return args


def parse_args(argv: Sequence[str] | None = None, script: str = "2d") -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) for ``script`` in {"2d", "3d"}; exits 2 with one line on bad input."""
    if script not in ("2d", "3d"):
        raise ValueError(f"script must be '2d' or '3d', got {script!r}")
    prog = os.path.basename(sys.argv[0]) if argv is None else f"train_{script}.py"
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.out_size is not None and args.image_size is not None and args.out_size > 4 * args.image_size:
        parser.error(f"argument -out_size: {args.out_size} is larger than 4 x -image_size")
    return resolve_defaults(args, script)
