"""The one typed configuration of a run, and its round trip through ``config.json`` and every checkpoint.

:class:`TrainConfig` holds the sections below plus the method's own ``Conf`` (its class in
:mod:`sam2_train.methods`). Every field is a :func:`sam2_train.engine.settings.setting`: its flag, help and kind
(``arch`` / ``run`` / ``free``) are field metadata, so ``cfg.py`` builds the parser from the fields and
:meth:`TrainConfig.differences` finds what a resumed run or a checkpoint may not change without a list of flag
names anywhere. :meth:`TrainConfig.to_dict` is what ``config.json`` and every checkpoint store,
:meth:`TrainConfig.from_dict` what ``evaluate.py``, ``predict.py``, ``-resume`` and ``-pretrain`` read back; a
checkpoint written before this format gets one line saying so (:class:`ConfigFormatError`).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from sam2_train.engine.errors import UserError
from sam2_train.engine.schedule import OptimConf
from sam2_train.engine.settings import (ARCH, FREE, RUN, float_pair, from_plain, int_list, kind_of, nonneg_int,
                                        positive_int, setting, str2bool, to_plain, unit_float, weight_list)
from sam2_train.engine.settings import image_size as size_multiple_of_32
from sam2_train.model.pcsw import PCSWConfig

__all__ = ["CONFIG_FORMAT", "ConfigFormatError", "ModelConf", "DataConf", "InferConf", "SemiConf", "RunConf",
           "TrainConfig", "SECTIONS"]

CONFIG_FORMAT = 2
SAM2_INFER = ("coarse", "boxes", "pcsw")       # -student sam2
STUDENT_INFER = ("student", "sam_refine")      # -student unet | unetpp


class ConfigFormatError(UserError, ValueError):
    """A stored config this code cannot read (older format, unknown settings)."""


@dataclass(frozen=True)
class ModelConf:
    """The network: SAM-2 student (``sam2``: :class:`sam2_train.model.sss_net.SSSNet`) or a lightweight one, and
    the SAM-2 guide of the SAM-guided methods."""
    student: str = setting("sam2", flag="-student", kind=ARCH, choices=("sam2", "unet", "unetpp"), group="method",
                           help="the trained network: sam2 (SSS's SAM-2) or a lightweight MONAI unet / unetpp "
                                "(U-Net++), trained from scratch; the SAM-guided methods prompt a SAM-2 guide "
                                "(-sam_config/-sam_ckpt)")
    sam_config: str = setting("sam2_hiera_s", flag="-sam_config", kind=ARCH, preset=True, group="seed", path=True,
                              help="sam2_hiera_{t,s,b+,l}, sam2.1_hiera_{t,s,b+,l} or a yaml path (default "
                                   "sam2_hiera_s; demo sam2_hiera_t)")
    sam_ckpt: str = setting("none", flag="-sam_ckpt", preset=True, group="seed", path=True,
                            help="SAM-2 checkpoint path, or 'none' for random init (default: none on demo, "
                                 "./checkpoints/<file matching -sam_config> otherwise)")
    image_size: int = setting(1024, flag="-image_size", kind=ARCH, type=size_multiple_of_32, preset=True, group="seed",
                              help="model input size, a multiple of 32 (default 1024; demo 128)")
    num_classes: int = setting(0, kind=ARCH)           # from the data
    dfe: bool = setting(False, flag="-dfe", kind=ARCH, type=str2bool, preset=True, group="method", metavar="{0,1}",
                        help="discriminative feature enhancement (part of -method sss, default 1 there; the other "
                             "methods train without it and refuse -dfe 1)")
    dfe_sim: str = setting("pixel", flag="-dfe_sim", kind=ARCH, choices=("pixel", "global"), group="DFE",
                           help="similarity per pixel, or pooled per image (authors' sketch)")
    dfe_levels: tuple = setting((0, 1, 2), flag="-dfe_levels", kind=ARCH, group="DFE",
                                type=int_list,
                                help="feature levels (0 = 1/4, 2 = 1/16)")
    memory_bank_size: int = setting(16, flag="-memory_bank_size", type=positive_int, group="seed",
                                    help="3D: most prompted (conditioning) frames kept in SAM-2's memory bank")
    freeze_encoder: bool = setting(False)              # -encoder_lr_mult 0
    grad_ckpt: bool = setting(False, flag="-grad_ckpt", kind=FREE, type=str2bool, group="run", metavar="{0,1}",
                              help="activation checkpointing of the Hiera blocks: less memory, the encoder forward "
                                   "recomputed in backward")
    guide_size: int = setting(1024, flag="-guide_size", type=size_multiple_of_32, preset=True, group="SAM-2 guide",
                              help="input size of the SAM-2 guide of the lightweight students (default 1024, "
                                   "SAM-2's native size; demo 128): images are resized up to it, prompts scaled by "
                                   "guide_size / image_size, masks brought back")


@dataclass(frozen=True)
class DataConf:
    """What the datasets of a run are built from, and (``class_names``, ``intensity``) what was found there."""
    dataset: str = setting("demo", flag="-dataset", kind=ARCH, group="seed",
                           help="acdc, bhsd: the paper's data; custom: your own folders (docs/data.md); demo: "
                                "phantoms made on first use")
    data_path: str | None = setting(None, flag="-data_path", preset=True, group="seed", path=True,
                                    help="dataset root (default ./data/<dataset>)")
    labeled_num: int | None = setting(None, flag="-labeled_num", type=positive_int, preset=True, group="data",
                                      help="ACDC: labeled cases (1, 3, 7, ...; default 3); BHSD/custom: labeled "
                                           "volumes (default: every training volume not held out for "
                                           "validation); demo: 2 patients (2D) / every volume (3D)")
    labeled_ratio: float | None = setting(None, flag="-labeled_ratio", type=unit_float, group="data",
                                          help="BHSD/custom: labeled fraction of the training volumes (overrides "
                                               "-labeled_num)")
    slab_len: int = setting(4, flag="-slab_len", type=positive_int, group="data",
                            help="2D: unlabeled slices come as slabs of this many consecutive slices (PCSW needs "
                                 "neighbours)")
    video_length: int = setting(8, flag="-video_length", type=positive_int, preset=True, group="seed",
                                help="3D: training clip length in slices (default 8)")
    hu_window: tuple = setting((0.0, 80.0), flag="-hu_window", type=float_pair, group="data",
                               help="CT window in HU, 'LOW,HIGH'")
    fg_oversample: float = setting(0.33, flag="-fg_oversample", type=unit_float, preset=True, group="data",
                                   help="3D: probability that a labeled training clip is placed over a labeled slice "
                                        "(nnU-Net's foreground oversampling; default 0.33, 3D demo 0.67)")
    class_spec: str | None = setting(None, flag="-class_names", kind=ARCH, group="data",
                                     help="custom: comma-separated foreground class names, label 1 first")
    class_names: tuple = setting((), kind=ARCH)         # the classes of the data, label 1 first
    intensity: tuple = setting(())                      # how images were mapped to [0, 1] (predict.py)
    # the data's 2D evaluation follows ACDC's protocols (-protocol ssl4mis | unimatch); other data: "volume"
    acdc_protocol: bool = setting(True, kind=FREE)


@dataclass(frozen=True)
class InferConf:
    """Label-free inference: the mode of validation and the reported numbers, and its rules."""
    infer: str = setting("pcsw", flag="-infer", choices=SAM2_INFER + STUDENT_INFER, preset=True, group="run",
                         help="inference mode of validation and the reported numbers: coarse (the coarse head alone), "
                              "boxes (coarse boxes -> SAM-2 decoder), pcsw (PCSW prompts -> decoder); default pcsw "
                              "for every SAM-2 method, the -pcsw 0 ablation included (one mode per comparison). A "
                              "lightweight student: student or sam_refine (default student). The final evaluation "
                              "reports every mode under by_infer")
    protocol: str = setting("ssl4mis", flag="-protocol", choices=("ssl4mis", "unimatch"), group="data",
                            help="2D resize rule of the evaluation (ssl4mis: nearest-resized argmax; unimatch: "
                                 "bilinear logits)")
    prompt_freq: int = setting(2, flag="-prompt_freq", type=positive_int, group="seed",
                               help="3D: prompt every k-th of each class's prompted slices (labeled clips, the "
                                    "teacher, inference)")
    km_points: int = setting(1, flag="-km_points", type=positive_int, group="SAM-2 guide",
                             help="Knowledge Mining's prompts (its training and -infer sam_refine): points per class, "
                                  "the student's most probable pixels, with the outer box of its thresholded mask")
    km_thresh: float = setting(0.5, flag="-km_thresh", type=unit_float, group="SAM-2 guide",
                               help="Knowledge Mining's prompts: threshold of the student's class probability whose "
                                    "mask gives the box")


@dataclass(frozen=True)
class SemiConf:
    """The method and the settings its family of losses shares."""
    method: str = setting("sss", flag="-method", kind=ARCH, group="method",
                          help="sss, or the baselines supervised / fixmatch (UniMatch-style weak-to-strong); with "
                               "-student unet|unetpp also mean_teacher and the SAM-guided km_onetime / km_continuous "
                               "(Knowledge Mining), semisam (SemiSAM), sammatch (SAM-Match)")
    lambda_u: float = setting(1.0, flag="-lambda_u", type=float, preset=True, group="method",
                              help="weight of the unlabeled loss (default 1; mean_teacher and semisam 0.1, SSL4MIS's "
                                   "consistency weight; km_onetime and km_continuous 0.5, Knowledge Mining's "
                                   "down-weighting of the pseudo-label loss, whose value the paper text available "
                                   "to us does not keep)")
    rampup: int = setting(0, flag="-rampup", type=nonneg_int, preset=True, group="method",
                          help="sigmoid ramp-up of lambda_u over N iterations (default 0; mean_teacher and semisam "
                               "the whole -max_iters, SSL4MIS's consistency_rampup; 3D demo 100)")
    tau_u: float = setting(0.95, flag="-tau_u", type=unit_float, group="method",
                           help="pseudo-label confidence threshold")
    cutmix_p: float = setting(0.5, flag="-cutmix_p", type=unit_float, group="method",
                              help="probability of CutMix per strong view")
    ce_weights: tuple = setting((), flag="-ce_weights", type=weight_list, preset=True, group="method",
                                metavar="W0,W1,...",
                                help="class-weighted CE of the labeled loss: one weight per class, background first "
                                     "(default unweighted; the 3D demo weighs its small bleeds up)")

    def ce_class_weight(self, device):
        """The CE weight per class (K+1,) on ``device``, None when unweighted."""
        import torch
        return torch.tensor(self.ce_weights, dtype=torch.float32, device=device) if self.ce_weights else None


@dataclass(frozen=True)
class RunConf:
    """How a run is executed: budget and cadence (iterations), batches, precision, weights, outputs."""
    script: str = setting("2d", kind=ARCH)             # "2d" (slices) or "3d" (volumes): which train_*.py
    max_iters: int = setting(300, flag="-max_iters", type=positive_int, preset=True, group="run",
                             help="training budget in iterations, the same for every -method (preset: ACDC 30000, "
                                  "BHSD 20000, demo 300)")
    val_every: int = setting(75, flag="-val_every", type=positive_int, preset=True, group="run",
                             help="validate every N iterations, for every -method (preset: ACDC and BHSD 1000, "
                                  "demo 75/85)")
    exp_name: str = setting("run", flag="-exp_name", kind=FREE, preset=True, group="seed",
                            help="run name; outputs go to <log_dir>/<exp_name>_<timestamp>/")
    log_dir: str = setting("logs", flag="-log_dir", kind=FREE, group="run")
    seed: int = setting(0, flag="-seed", type=int, group="run")
    device: str = setting("auto", flag="-device", kind=FREE, choices=("auto", "cuda", "cpu"), group="run")
    gpu_device: int = setting(0, flag="-gpu_device", kind=FREE, type=nonneg_int, group="seed",
                              help="CUDA device index (single-process runs)")
    distributed: str = setting("auto", flag="-distributed", kind=FREE, choices=("none", "auto", "ddp"), group="seed",
                               help="auto: DDP when launched by torchrun, else single process")
    amp: str = setting("auto", flag="-amp", choices=("auto", "bf16", "off"), group="run",
                       help="auto = bf16 autocast on CUDA, off on CPU; bf16 also on CPU (about 2x for a U-Net on AMX "
                            "cores)")
    batch_size: int = setting(4, flag="-b", type=positive_int, preset=True, group="seed",
                              help="labeled batch: 2D slices (default 4) / 3D clips (default 1)")
    batch_size_u: int = setting(4, flag="-b_u", type=positive_int, preset=True, group="data",
                                help="2D: unlabeled slices per step (default = -b), as max(2, b_u // slab_len) slabs "
                                     "from distinct volumes; 3D: unlabeled clips (default 1)")
    num_workers: int = setting(0, flag="-num_workers", kind=FREE, type=nonneg_int, preset=True, group="run",
                               help="DataLoader workers (default min(8, cpus))")
    ema: float = setting(0.99, flag="-ema", type=unit_float, group="method",
                         help="EMA decay of the weights: the teacher of the semi-supervised methods and, for every "
                              "method, the weights that are validated and reported (0 = the raw student)")
    val_volumes: int = setting(0, flag="-val_volumes", type=nonneg_int, preset=True, group="run",
                               help="periodic validation on the first N volumes only (0 = all; default 0, 3D demo "
                                    "2); the final evaluation always uses every volume")
    log_freq: int = setting(20, flag="-log_freq", kind=FREE, type=positive_int, group="run",
                            help="log scalars every N iterations")
    save_freq: int = setting(200, flag="-save_freq", kind=FREE, type=nonneg_int, group="run",
                             help="also write last.pt every N iterations (0 = only at validation)")
    max_bad_steps: int = setting(5, flag="-max_bad_steps", kind=FREE, type=positive_int, group="run",
                                 help="stop after this many non-finite losses in a row (each is skipped)")
    resume: str | None = setting(None, flag="-resume", kind=FREE, group="run",
                                 help="continue the run saved in this checkpoint (last.pt)")
    resume_force: bool = setting(False, flag="-resume_force", kind=FREE, type=str2bool, group="run", metavar="{0,1}",
                                 help="resume even though settings that change the run differ from the checkpoint's "
                                      "(recorded in config.json under 'resumed')")
    pretrain: str | None = setting(None, flag="-pretrain", group="seed",
                                   help="initialise from a checkpoint of this project (strict load) before training")
    vis: bool = setting(False, flag="-vis", kind=FREE, type=str2bool, group="seed", metavar="{0,1}",
                        help="write PNG overlays of validation predictions")
    compile: bool = setting(False, flag="-compile", kind=FREE, type=str2bool, group="run", metavar="{0,1}",
                            help="torch.compile the image encoder")
    check_data: bool = setting(True, flag="-check_data", kind=FREE, type=str2bool, group="data", metavar="{0,1}",
                               help="check every file the run reads before training (python -m dataset.check; "
                                    "results cached per file in ~/.cache/sss/data_check.json)")


SECTIONS = {"model": ModelConf, "data": DataConf, "infer": InferConf, "semi": SemiConf, "pcsw": PCSWConfig,
            "optim": OptimConf, "run": RunConf}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run is built from: the sections of :data:`SECTIONS` and ``method``, the method's own
    ``Conf`` (:meth:`sam2_train.methods.Method.conf_class`)."""
    model: ModelConf
    data: DataConf
    infer: InferConf
    semi: SemiConf
    pcsw: PCSWConfig
    optim: OptimConf
    run: RunConf
    method: Any

    def replace(self, **sections: dict) -> "TrainConfig":
        """A copy with fields of sections replaced: ``config.replace(run={"max_iters": 10})``."""
        new = {name: dataclasses.replace(getattr(self, name), **values) for name, values in sections.items()}
        return dataclasses.replace(self, **new)

    # ------------------------------------------------------------------ round trip
    def to_dict(self) -> dict:
        """Plain data: ``{"format": 2, <section>: {field: value}, "method": {field: value}}``."""
        out = {"format": CONFIG_FORMAT}
        out.update({name: to_plain(getattr(self, name)) for name in SECTIONS})
        out["method"] = to_plain(self.method)
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "the config") -> "TrainConfig":
        """The config of :meth:`to_dict` output (a checkpoint's ``config``, ``config.json``)."""
        from sam2_train.methods.registry import method_class
        if not isinstance(data, dict):
            raise ConfigFormatError(f"{source}: holds no config (expected the settings of a run of this code, "
                                    f"config format {CONFIG_FORMAT})")
        if data.get("format") != CONFIG_FORMAT:
            got = data.get("format")
            raise ConfigFormatError(
                f"{source}: its config predates the config format of this code (format {CONFIG_FORMAT}, found "
                f"{got if got is not None else 'a flat flag list'}); retrain with this version, or read it with the "
                "version of the code that wrote it")
        try:
            parts = {name: from_plain(conf_cls, data.get(name, {}), f"{source}: {name}")
                     for name, conf_cls in SECTIONS.items()}
            klass = method_class(parts["semi"].method, parts["model"].student, parts["run"].script)
            parts["method"] = from_plain(klass.Conf, data.get("method", {}), f"{source}: method")
        except (TypeError, ValueError) as e:
            raise ConfigFormatError(str(e)) from None
        return cls(**parts)

    # ------------------------------------------------------------------ what differs
    def differences(self, other: "TrainConfig", kinds=(ARCH, RUN)) -> list[tuple[str, str | None, Any, Any]]:
        """``[(section.field, flag, self's value, other's value)]`` for the fields of ``kinds`` that differ."""
        out = []
        for name in (*SECTIONS, "method"):
            a, b = getattr(self, name), getattr(other, name)
            if name == "method" and type(a) is not type(b):
                continue                                      # another method: semi.method already differs
            for f in dataclasses.fields(a):
                va, vb = getattr(a, f.name), getattr(b, f.name)
                if kind_of(f) in kinds and _norm(va, f.metadata.get("path")) != _norm(vb, f.metadata.get("path")):
                    out.append((f"{name}.{f.name}", f.metadata.get("flag"), va, vb))
        return out


def _norm(v, path: bool = False):
    if path and isinstance(v, str):   # one file, however spelled (an existing one by its real path)
        return os.path.realpath(v) if os.path.exists(v) else os.path.normpath(v)
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v
