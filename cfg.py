"""Command-line configuration shared by ``train_2d.py``, ``train_3d.py`` and ``evaluate.py``.

``parse_args(argv=None, script="2d")`` parses the flags once: the seed flags of the SSS / Medical-SAM2 README
keep their single-dash spelling; the flags this project adds are grouped by what they control. Values that
depend on the dataset default to ``None`` in the parser and come from the dataset's preset in
``configs/presets.yaml`` (:func:`resolve_defaults`), so ``python train_2d.py -dataset demo`` needs no other
flag while the paper commands keep the paper's settings. :func:`to_config` turns the parsed flags into the
frozen dataclasses the library takes (:class:`sam2_train.engine.trainer.TrainConfig`); the library never sees
the argparse namespace.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from omegaconf import OmegaConf

from dataset.build import DataConf

from sam2_train.engine.schedule import OPTIMIZERS, SCHEDULES, OptimConf
from sam2_train.engine.trainer import RunConf, TrainConfig
from sam2_train.model.build import CKPT_FILES, SAM_CONFIG_NAMES
from sam2_train.model.pcsw import PCSWConfig
from sam2_train.model.semi import LIGHT_STUDENT_ONLY, SAM_GUIDED, SemiConf
from sam2_train.model.sss_net import ModelConf
from sam2_train.model.students import STUDENTS

DATASETS = ("acdc", "bhsd", "custom", "demo")
SAM2_METHODS = ("supervised", "fixmatch", "sss")        # -student sam2
LIGHT_METHODS = ("supervised", "fixmatch", *LIGHT_STUDENT_ONLY)   # -student unet | unetpp
METHODS = (*SAM2_METHODS, *LIGHT_STUDENT_ONLY)
SAM2_INFER = ("coarse", "boxes", "pcsw")      # -student sam2
STUDENT_INFER = ("student", "sam_refine")     # -student unet | unetpp
INFER_MODES = SAM2_INFER + STUDENT_INFER
PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "presets.yaml")

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


def weight_list(value: str) -> tuple[float, ...]:
    """'w0,w1,...' -> non-negative floats, at least one positive."""
    try:
        out = tuple(float(p) for p in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers 'W0,W1,...', got {value!r}") from None
    if min(out) < 0 or max(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected non-negative weights, at least one positive, got {value!r}")
    return out


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
    g.add_argument("-prompt", type=lower_choice(("bbox", "click")), default="bbox",
                   help="3D: ground-truth prompt type on labeled clips")
    g.add_argument("-prompt_freq", type=positive_int, default=2,
                   help="3D: prompt every k-th frame of a labeled training clip; PCSW prompts (teacher, "
                        "inference): every k-th of each class's prompted slices")
    g.add_argument("-pretrain", type=str, default=None,
                   help="initialise from a checkpoint of this project (strict load) before training")
    g.add_argument("-val_freq", type=positive_int, default=1,
                   help="validate every N x -val_every iterations (the seed commands' 1 = every -val_every)")
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
                   help="auto = bf16 autocast on CUDA, off on CPU; bf16 also on CPU (about 2x for a U-Net on AMX cores)")
    g.add_argument("-seed", type=int, default=0)
    g.add_argument("-max_iters", type=positive_int, default=None,
                   help="training budget in iterations, the same for every -method (preset: ACDC 30000, BHSD "
                        "20000, demo 300)")
    g.add_argument("-val_every", type=positive_int, default=None,
                   help="validate every N iterations, for every -method (preset: ACDC and BHSD 1000, demo 75/60)")
    g.add_argument("-infer", type=lower_choice(INFER_MODES), default=None,
                   help="inference mode of validation and the reported test numbers: coarse (the coarse head "
                        "alone), boxes (coarse boxes -> SAM-2 decoder), pcsw (PCSW prompts -> decoder); default "
                        "pcsw for every SAM-2 method, the -pcsw 0 ablation included (one mode per comparison). A "
                        "lightweight student: student or sam_refine (default student). The final evaluation "
                        "reports every mode under by_infer")
    g.add_argument("-resume", type=str, default=None, help="continue the run saved in this checkpoint (last.pt)")
    _bool_flag(g, "-resume_force", False, "resume even though flags that change the run differ from the "
               "checkpoint's (recorded in config.json under 'resumed')")
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
                        "BHSD every training volume not held out for validation; custom 1); demo: 2 patients (2D) / "
                        "every training volume (3D)")
    g.add_argument("-labeled_ratio", type=unit_float, default=None,
                   help="BHSD/custom: labeled fraction of the training volumes (overrides -labeled_num)")
    g.add_argument("-b_u", type=positive_int, default=None,
                   help="2D: unlabeled slices per step (default = -b), as max(2, b_u // slab_len) slabs from "
                        "distinct volumes; 3D: unlabeled clips (default 1)")
    g.add_argument("-fg_oversample", type=unit_float, default=None,
                   help="3D: probability that a labeled training clip is placed over a labeled slice (nnU-Net's "
                        "foreground oversampling; default 0.33, 3D demo 0.67)")
    g.add_argument("-slab_len", type=positive_int, default=4,
                   help="2D: unlabeled slices come as slabs of this many consecutive slices (PCSW needs neighbours)")
    g.add_argument("-hu_window", type=float_pair, default=(0.0, 80.0), help="CT window in HU, 'LOW,HIGH'")
    g.add_argument("-class_names", type=str, default=None,
                   help="custom: comma-separated foreground class names, label 1 first")
    g.add_argument("-protocol", type=lower_choice(("ssl4mis", "unimatch")), default="ssl4mis",
                   help="ACDC evaluation protocol (nearest-resized argmax vs bilinear logits)")
    _bool_flag(g, "-check_data", True, "check every file the run reads before training (python -m dataset.check; "
               "results cached per file in ~/.cache/sss/data_check.json)")

    g = p.add_argument_group("method")
    g.add_argument("-method", type=lower_choice(METHODS), default="sss",
                   help="sss, or the baselines supervised / fixmatch (UniMatch-style weak-to-strong); with -student "
                        "unet|unetpp also mean_teacher and the SAM-guided km_onetime / km_continuous (Knowledge "
                        "Mining), semisam (SemiSAM), sammatch (SAM-Match)")
    g.add_argument("-student", type=lower_choice(STUDENTS), default="sam2",
                   help="the trained network: sam2 (SSS's SAM-2) or a lightweight MONAI unet / unetpp (U-Net++), "
                        "trained from scratch; the SAM-guided methods prompt a frozen SAM-2 (-sam_config/-sam_ckpt)")
    g.add_argument("-dfe", type=str2bool, default=None, metavar="{0,1}",
                   help="discriminative feature enhancement (part of -method sss, default 1 there; the other methods "
                        "train without it and refuse -dfe 1)")
    g.add_argument("-pcsw", type=str2bool, default=None, metavar="{0,1}",
                   help="PCSW prompts in training, for the labeled images and the teacher (0: unconstrained coarse "
                        "boxes; part of -method sss, default 1 there; the other methods refuse -pcsw 1). Inference "
                        "is -infer's")
    g.add_argument("-ema", type=unit_float, default=0.99,
                   help="EMA decay of the weights: the teacher of the semi-supervised methods and, for every method, "
                        "the weights that are validated and reported (0 = the raw student)")
    g.add_argument("-lambda_u", type=float, default=None,
                   help="weight of the unlabeled loss (default 1; mean_teacher and semisam 0.1, SSL4MIS's "
                        "consistency weight; km_onetime and km_continuous 0.5, Knowledge Mining's down-weighting of "
                        "the pseudo-label loss, whose value the paper text available to us does not keep)")
    g.add_argument("-rampup", type=nonneg_int, default=None,
                   help="sigmoid ramp-up of lambda_u over N iterations (default 0; mean_teacher and semisam the "
                        "whole -max_iters, SSL4MIS's consistency_rampup; 3D demo 100)")
    g.add_argument("-tau_u", type=unit_float, default=0.95, help="pseudo-label confidence threshold")
    g.add_argument("-ce_weights", type=weight_list, default=None, metavar="W0,W1,...",
                   help="class-weighted CE of the coarse head: one weight per class, background first (default "
                        "unweighted; the 3D demo weighs its small bleeds up)")
    g.add_argument("-tau_fallback", type=unit_float, default=0.98,
                   help="pseudo-label threshold of classes prompted by a PCSW fallback (stricter when > -tau_u)")
    g.add_argument("-p_gt", type=unit_float, default=0.5,
                   help="labeled images: probability of a (jittered) ground-truth box prompt instead of PCSW")
    _bool_flag(g, "-unsup_encoder_grad", False, "let the unlabeled loss back-propagate into the image encoder")
    g.add_argument("-optim", type=lower_choice(OPTIMIZERS), default=None,
                   help="adamw, or sgd (momentum 0.9, SSL4MIS/UniMatch; weight decay on every parameter); default "
                        "adamw, the U-Net students' preset sgd")
    g.add_argument("-clip_grad", type=float, default=None,
                   help="clip the gradient norm of the trained network to this (0 = no clipping); default 1, the "
                        "U-Net students' preset 0 (SSL4MIS does not clip)")
    g.add_argument("-sched", type=lower_choice(SCHEDULES), default="poly")
    g.add_argument("-warmup_iters", type=nonneg_int, default=0, help="linear learning-rate warm-up iterations")
    g.add_argument("-weight_decay", type=float, default=1e-4)
    g.add_argument("-encoder_lr_mult", type=float, default=None,
                   help="learning-rate multiplier of the image encoder; 0 freezes it (no backward through it). "
                        "Default 1; demo 0: a randomly initialised Hiera does not train from scratch in minutes")
    g.add_argument("-cutmix_p", type=unit_float, default=0.5, help="probability of CutMix per strong view")

    g = p.add_argument_group("SAM-guided baselines (-student unet|unetpp)")
    g.add_argument("-guide_size", type=image_size, default=None,
                   help="input size of the SAM-2 guide (default 1024, SAM-2's native size; demo 128): images are "
                        "resized up to it, prompts scaled by guide_size / image_size, masks brought back")
    g.add_argument("-km_points", type=positive_int, default=1,
                   help="Knowledge Mining: points per class in SAM-2's prompt, the student's most probable pixels "
                        "(with the outer box of its thresholded mask)")
    g.add_argument("-km_thresh", type=unit_float, default=0.5,
                   help="Knowledge Mining: threshold of the student's class probability whose mask gives the box")
    g.add_argument("-km_start", type=nonneg_int, default=None,
                   help="km_onetime / km_continuous: the iteration from which SAM-2's labels are used (one-time: "
                        "made then); labeled data only before, as the paper first trains the student on the "
                        "labeled subset (default half of -max_iters)")
    g.add_argument("-km_agree", type=unit_float, default=0.0,
                   help="km_continuous, our extra (not in the paper): a class of a fresh SAM-2 label is trained on "
                        "only where its Dice with the student's current prediction is at least this (0 = off)")
    g.add_argument("-sam_lambda", type=float, default=0.05,
                   help="semisam: weight of L_sam at iteration 0, decaying as exp(-5 (t/max_iters)^2) (SemiSAM's "
                        "code: 0.5 x 0.1 x sigmoid_rampup(max_iterations - iter_num))")
    g.add_argument("-sam_start", type=nonneg_int, default=None,
                   help="sammatch: the iteration from which SAM-2's labels replace the teacher's (the authors' joint "
                        "stage, after a UniMatch model and a fine-tuned SAM; default half of -max_iters)")
    g.add_argument("-bbox_shift", type=nonneg_int, default=5,
                   help="sammatch: margin in pixels added around the box of the teacher's argmax (the authors' "
                        "bbox_shift)")
    g.add_argument("-guide_train", type=str2bool, default=None, metavar="{0,1}",
                   help="sammatch: fine-tune SAM-2 alongside (loss_x_sam + 0.25 loss_u_w_sam, its own SGD), as "
                        "SAM-Match does; default 1 for sammatch, refused by the other methods (their SAM is frozen)")
    g.add_argument("-guide_lr", type=float, default=5e-4,
                   help="sammatch -guide_train 1: SGD learning rate of SAM-2 (momentum 0.9, weight decay 1e-4)")

    g = p.add_argument_group("DFE")
    g.add_argument("-dfe_sim", type=lower_choice(("pixel", "global")), default="pixel",
                   help="similarity per pixel, or pooled per image (authors' sketch)")
    g.add_argument("-dfe_levels", type=int_list, default=(0, 1, 2), help="feature levels (0 = 1/4, 2 = 1/16)")

    g = p.add_argument_group("PCSW")
    g.add_argument("-pcsw_thresh", type=unit_float, default=0.5, help="binarisation threshold on class probability")
    g.add_argument("-pcsw_tau", type=unit_float, default=0.8, help="continuity threshold C >= tau")
    g.add_argument("-pcsw_tau_conf", type=unit_float, default=0.6, help="minimum mean confidence of a component")
    g.add_argument("-pcsw_min_len", type=positive_int, default=None,
                   help="shortest window N_min (slices); default 2 in 2D, 1 in 3D (single-slice lesions)")
    g.add_argument("-pcsw_max_len", type=nonneg_int, default=0, help="longest window N_max (0 = whole slab)")
    g.add_argument("-pcsw_min_voxels", type=nonneg_int, default=4, help="smallest component, in coarse-map voxels")
    g.add_argument("-pcsw_min_area", type=unit_float, default=0.0, help="smallest per-slice area, fraction of the slice")
    g.add_argument("-pcsw_max_area", type=unit_float, default=0.5, help="largest per-slice area, fraction of the slice")
    g.add_argument("-pcsw_margin", type=nonneg_int, default=2, help="box margin in coarse-map pixels")
    g.add_argument("-pcsw_select", type=lower_choice(("longest", "continuity")), default="longest",
                   help="accepted window: the longest with C >= tau, or the one with the highest C")
    g.add_argument("-pcsw_fallback", type=str2bool, default=True, metavar="{0,1}",
                   help="a class PCSW rejects but the coarse head predicts is prompted by its 3-D component with "
                        "the largest confidence mass, flagged as fallback (stricter pseudo-labels, -tau_fallback)")
    g.add_argument("-pcsw_calibrate", type=str2bool, default=True, metavar="{0,1}",
                   help="per-class gates min(-pcsw_thresh|-pcsw_tau_conf, c_k), c_k = EMA of the class's mean "
                        "coarse probability on its labeled ground-truth pixels")
    g.add_argument("-pcsw_multifocal", type=str2bool, default=None, metavar="{0,1}",
                   help="prompt every kept component of a class (merged), not only the largest; default 0 in 2D, "
                        "1 in 3D (multifocal, diffuse lesions)")
    g.add_argument("-pcsw_fuse", type=str2bool, default=True, metavar="{0,1}",
                   help="label maps (inference boxes/pcsw) and the teacher's pseudo-labels are the argmax of the "
                        "coarse head and SAM-2 averaged on prompted classes (0: SAM-2's masks alone, the paper's rule)")
    return p



PRESET_KEYS = ("exp_name", "sam_config", "sam_ckpt", "image_size", "lr", "b", "max_iters", "val_every", "val_volumes",
               "labeled_num", "encoder_lr_mult", "rampup", "ce_weights", "video_length", "fg_oversample", "optim",
               "clip_grad", "guide_size")


def load_preset(dataset: str, script: str, student: str = "sam2") -> dict:
    """The dataset's block of ``configs/presets.yaml`` with (2D, 3D) pairs resolved for ``script``; a
    lightweight student's sub-block (``unet:``) replaces the keys it names."""
    block = OmegaConf.to_container(OmegaConf.load(PRESETS))[dataset]
    light = block.pop("unet", {})
    if student != "sam2":
        block.update(light)
    return {k: (v[0 if script == "2d" else 1] if isinstance(v, list) else v) for k, v in block.items()}


def default_data_path(dataset: str, script: str) -> str:
    """``./data/<dataset>`` (ACDC upper-case); the demo writes ``data/demo_acdc`` (2D) or ``data/demo_bhsd`` (3D)."""
    if dataset == "demo":
        return os.path.join("data", f"demo_{'acdc' if script == '2d' else 'bhsd'}")
    return os.path.join("data", dataset.upper() if dataset == "acdc" else dataset)


def resolve_defaults(args: argparse.Namespace, script: str) -> argparse.Namespace:
    """Fill the ``None`` flags from the dataset's preset and the script ("2d" or "3d")."""
    preset = load_preset(args.dataset, script, args.student)
    mean_teacher_rampup = args.rampup is None and args.method in ("mean_teacher", "semisam")
    for name in PRESET_KEYS:
        if getattr(args, name) is None and name in preset:
            setattr(args, name, preset[name])
    if args.sam_ckpt is None:
        args.sam_ckpt = os.path.join("checkpoints", CKPT_FILES.get(args.sam_config, "<checkpoint matching -sam_config>"))
    if args.out_size is None:
        args.out_size = args.image_size
    args.ce_weights = tuple(args.ce_weights or ())
    if args.video_length is None:
        args.video_length = 8
    if args.fg_oversample is None:
        args.fg_oversample = 0.33
    if args.pcsw_min_len is None:
        args.pcsw_min_len = 2 if script == "2d" else 1
    if args.pcsw_multifocal is None:
        args.pcsw_multifocal = script == "3d"
    if args.data_path is None:
        args.data_path = default_data_path(args.dataset, script)
    if args.b_u is None:
        args.b_u = args.b if script == "2d" else 1
    if args.num_workers is None:
        args.num_workers = min(8, os.cpu_count() or 1)
    if args.lambda_u is None:
        args.lambda_u = {"mean_teacher": 0.1, "semisam": 0.1, "km_onetime": 0.5, "km_continuous": 0.5}.get(
            args.method, 1.0)
    if mean_teacher_rampup:     # SSL4MIS: sigmoid_rampup(iter // 150, 200) reaches 1 at 30000 = max_iterations
        args.rampup = args.max_iters
    args.optim = args.optim or "adamw"
    args.clip_grad = 1.0 if args.clip_grad is None else args.clip_grad
    args.guide_size = args.guide_size or 1024
    if args.km_start is None:   # read by km_onetime and km_continuous only
        args.km_start = args.max_iters // 2 if args.method in ("km_onetime", "km_continuous") else 0
    if args.sam_start is None:  # read by sammatch only
        args.sam_start = args.max_iters // 2 if args.method == "sammatch" else 0
    if args.guide_train is None:
        args.guide_train = args.method == "sammatch"
    if args.infer is None:  # one mode for every method of a student kind (-pcsw 0 changes the training prompts only)
        args.infer = "student" if args.student != "sam2" else "pcsw"
    if args.method != "sss":  # DFE and PCSW are parts of SSS; the baselines train without them (-dfe 1 is refused)
        args.dfe, args.pcsw = False, False
    else:
        args.dfe = True if args.dfe is None else args.dfe
        args.pcsw = True if args.pcsw is None else args.pcsw
    args.script = script
    return args


# Flags read by one script only: (flag, the script that reads it, the parser default).
SCRIPT_ONLY_FLAGS = (("prompt", "3d", "bbox"), ("video_length", "3d", None), ("memory_bank_size", "3d", 16),
                     ("slab_len", "2d", 4), ("protocol", "2d", "ssl4mis"),
                     ("fg_oversample", "3d", None))


def student_method_error(args: argparse.Namespace) -> str | None:
    """Why ``-student``, ``-method`` and ``-infer`` do not go together (None when they do)."""
    light = args.student != "sam2"
    if args.method != "sss" and (args.dfe or args.pcsw):
        on = " and ".join(f"-{name} 1" for name in ("dfe", "pcsw") if getattr(args, name))
        return (f"{on}: DFE and PCSW are parts of SSS; -method {args.method} trains without them (drop the flag, "
                f"or use -method sss)")
    if getattr(args, "guide_train", None) and args.method != "sammatch":
        return (f"-guide_train 1 is SAM-Match's fine-tuning of SAM-2: -method {args.method} keeps its SAM-2 frozen, "
                "as its paper does")
    if light and args.method == "sss":
        return "-method sss trains SAM-2 (DFE, PCSW, the decoder): use -student sam2"
    if not light and args.method in LIGHT_STUDENT_ONLY:
        what = "prompts a frozen SAM-2 from" if args.method in SAM_GUIDED else "is implemented for"
        return f"-method {args.method} {what} a lightweight student: add -student unet or -student unetpp"
    if light and (getattr(args, "compile", False) or getattr(args, "grad_ckpt", False)):
        return "-compile and -grad_ckpt act on SAM-2's image encoder: not with a lightweight -student"
    if light and args.script == "3d":
        return f"-student {args.student} is a 2D network: use train_2d.py"
    if args.infer is not None and args.infer not in (STUDENT_INFER if light else SAM2_INFER):
        return (f"-infer {args.infer} does not fit -student {args.student} (choose from "
                f"{', '.join(STUDENT_INFER if light else SAM2_INFER)})")
    return None


def flags_ignored_by(args: argparse.Namespace, script: str) -> list[str]:
    """Flags set away from their default (before :func:`resolve_defaults`) that ``script`` does not read."""
    return [f"-{name}" for name, reader, default in SCRIPT_ONLY_FLAGS
            if reader != script and getattr(args, name) != default]


def data_conf(args: argparse.Namespace) -> DataConf:
    """The dataset settings of resolved flags (:func:`resolve_defaults` ran)."""
    return DataConf(dataset=args.dataset, data_path=args.data_path, image_size=args.image_size, seed=args.seed,
                    method=args.method, slab_len=args.slab_len, video_length=args.video_length,
                    hu_window=tuple(args.hu_window), fg_oversample=args.fg_oversample, labeled_num=args.labeled_num,
                    labeled_ratio=args.labeled_ratio, class_names=args.class_names)


def to_config(args: argparse.Namespace, num_classes: int) -> TrainConfig:
    """The typed settings of a run: model, semi-supervised method, PCSW, optimisation, run."""
    if args.ce_weights and len(args.ce_weights) != num_classes + 1:
        raise ValueError(f"-ce_weights needs {num_classes + 1} weights (background + {num_classes} classes), "
                         f"got {len(args.ce_weights)}")
    model = ModelConf(sam_config=args.sam_config, sam_ckpt=args.sam_ckpt, image_size=args.image_size,
                      num_classes=num_classes, dfe=bool(args.dfe), dfe_sim=args.dfe_sim,
                      dfe_levels=tuple(args.dfe_levels),
                      memory_bank_size=args.memory_bank_size if args.script == "3d" else None,
                      freeze_encoder=args.encoder_lr_mult == 0, grad_ckpt=bool(args.grad_ckpt),
                      student=getattr(args, "student", "sam2"), guide_size=args.guide_size)
    semi = SemiConf(method=args.method, lambda_u=args.lambda_u, rampup=args.rampup, tau_u=args.tau_u, p_gt=args.p_gt,
                    cutmix_p=args.cutmix_p, unsup_encoder_grad=bool(args.unsup_encoder_grad), out_size=args.out_size,
                    slab_len=args.slab_len, prompt=args.prompt, prompt_freq=args.prompt_freq, use_pcsw=bool(args.pcsw),
                    tau_fallback=args.tau_fallback, ce_weights=tuple(args.ce_weights), km_points=args.km_points,
                    km_thresh=args.km_thresh, km_start=args.km_start, km_agree=args.km_agree,
                    sam_lambda=args.sam_lambda, sam_decay=args.max_iters, sam_start=args.sam_start,
                    bbox_shift=args.bbox_shift, guide_train=bool(args.guide_train), guide_lr=args.guide_lr)
    pcsw = PCSWConfig(thresh=args.pcsw_thresh, tau=args.pcsw_tau, tau_conf=args.pcsw_tau_conf,
                      min_len=args.pcsw_min_len, max_len=args.pcsw_max_len, min_voxels=args.pcsw_min_voxels,
                      min_area=args.pcsw_min_area, max_area=args.pcsw_max_area, margin=args.pcsw_margin,
                      select=args.pcsw_select, fallback=bool(args.pcsw_fallback),
                      calibrate=bool(args.pcsw_calibrate), fuse=bool(args.pcsw_fuse),
                      multifocal=bool(args.pcsw_multifocal))
    optim = OptimConf(lr=args.lr, weight_decay=args.weight_decay, encoder_lr_mult=args.encoder_lr_mult,
                      sched=args.sched, warmup_iters=args.warmup_iters, optim=args.optim, clip_grad=args.clip_grad)
    run = RunConf(script=args.script, exp_name=args.exp_name, log_dir=args.log_dir, seed=args.seed, amp=args.amp,
                  max_iters=args.max_iters, val_every=args.val_every * args.val_freq, val_volumes=args.val_volumes,
                  log_freq=args.log_freq, save_freq=args.save_freq, max_bad_steps=args.max_bad_steps,
                  batch_size=args.b, batch_size_u=args.b_u, num_workers=args.num_workers, ema=args.ema,
                  infer=args.infer, protocol=args.protocol, resume=args.resume, resume_force=bool(args.resume_force),
                  pretrain=args.pretrain,
                  vis=bool(args.vis), compile=bool(args.compile))
    return TrainConfig(model=model, semi=semi, pcsw=pcsw, optim=optim, run=run)


def parse_args(argv: Sequence[str] | None = None, script: str = "2d") -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) for ``script`` in {"2d", "3d"}; exits 2 with one line on bad input."""
    if script not in ("2d", "3d"):
        raise ValueError(f"script must be '2d' or '3d', got {script!r}")
    prog = os.path.basename(sys.argv[0]) if argv is None else f"train_{script}.py"
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.out_size is not None and args.image_size is not None and args.out_size > 4 * args.image_size:
        parser.error(f"argument -out_size: {args.out_size} is larger than 4 x -image_size")
    for flag in flags_ignored_by(args, script):
        other = "train_3d.py" if script == "2d" else "train_2d.py"
        print(f"warning: {flag} is read by {other} only; train_{script}.py ignores it", file=sys.stderr)
    args.script = script
    problem = student_method_error(args)
    if problem:
        parser.error(problem)
    return resolve_defaults(args, script)
