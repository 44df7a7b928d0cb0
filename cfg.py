"""Command-line flags of ``train_2d.py`` / ``train_3d.py`` -> :class:`sam2_train.engine.config.TrainConfig`.

Every flag is a field of a config section or of a registered method's ``Conf`` (its metadata holds the flag,
help, parser and kind: :mod:`sam2_train.engine.settings`); this module only builds the parser from those fields,
maps the parsed flags back onto them and applies the defaults, in this order: the command line, the method's
rules (:meth:`Method.defaults`, e.g. a consistency ramp over the whole budget), the dataset's preset
(``configs/presets.yaml`` or the registry entry's own), the script's rules (:func:`script_rules`), the field's
default. The seed flags of the SSS / Medical-SAM2 README keep their single-dash spelling. The library never
sees the argparse namespace.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

from omegaconf import OmegaConf

from dataset.registry import dataset_names, dataset_spec
from sam2_train.engine.config import SECTIONS, TrainConfig
from sam2_train.engine.errors import RunSetupError, UserError
from sam2_train.engine.settings import OneLineParser, flag_fields, lower_choice, str2bool
from sam2_train.methods.registry import method_class, method_names, registered
from sam2_train.model.build import CKPT_FILES, resolve_sam_config

PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "presets.yaml")
GROUPS = ("seed flags (SSS / Medical-SAM2 README)", "run", "data", "method", "SAM-2 guide", "DFE", "PCSW")
_GROUP_OF = {"seed": GROUPS[0]}
# Flags read by one script only: (flag, the script that reads it).
SCRIPT_ONLY_FLAGS = (("-prompt", "3d"), ("-prompt_freq", "3d"), ("-video_length", "3d"), ("-memory_bank_size", "3d"),
                     ("-slab_len", "2d"), ("-protocol", "2d"), ("-fg_oversample", "3d"))


def _config_classes():
    """(section name, class) of every config section, then ("method", Conf) of every registered method."""
    out = list(SECTIONS.items())
    seen = set()
    for klass in registered():
        if klass.Conf not in seen:
            seen.add(klass.Conf)
            out.append(("method", klass.Conf))
    return out


def flag_table() -> dict[str, tuple[str, dataclasses.Field]]:
    """flag -> (section, field); a flag of several methods' Confs must be declared the same way in each."""
    table: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, klass in _config_classes():
        for f in flag_fields(klass):
            flag = f.metadata["flag"]
            if flag in table and (table[flag][0], table[flag][1].name) != (section, f.name):
                raise ValueError(f"flag {flag} is declared by two settings: {table[flag][0]}.{table[flag][1].name} "
                                 f"and {section}.{f.name}")
            table.setdefault(flag, (section, f))
    return table


def build_parser(prog: str | None = None) -> OneLineParser:
    """The parser of every flag; values not given are None (so defaults can be resolved in order)."""
    p = OneLineParser(prog=prog, description="SSS: semi-supervised SAM-2 for medical image segmentation.")
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    seed = groups[GROUPS[0]]
    seed.add_argument("-net", type=lower_choice(("sam2",)), default="sam2", help="network family (only sam2)")
    seed.add_argument("-val_freq", type=int, default=1,
                      help="validate every N x -val_every iterations (the seed commands' 1 = every -val_every)")
    for flag, (section, f) in flag_table().items():
        meta = f.metadata
        group = groups[_GROUP_OF.get(meta["group"], meta["group"] or "method")]
        kw = {"type": meta["type"] or str, "default": None, "help": _help(meta, f)}
        if meta["type"] is str2bool:
            kw.update(nargs="?", const=True, metavar="{0,1}")
        elif meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        if flag == "-dataset":
            kw["type"] = lower_choice(dataset_names())
        elif flag == "-method":
            kw["type"] = lower_choice(method_names())
        group.add_argument(flag, **kw)
    return p


def _help(meta: dict, f: dataclasses.Field) -> str:
    text = meta["help"] or ""
    if meta["choices"]:
        text = f"{{{','.join(meta['choices'])}}} " + text
    if not meta["preset"] and f.default not in (None, "", ()):
        text += f" (default {f.default})"
    return text.strip()


# ---------------------------------------------------------------------------------------------- presets
def load_preset(dataset: str, script: str, student: str = "sam2") -> dict:
    """The dataset's preset as flag -> value (pairs resolved for ``script``); a lightweight student's sub-block
    (``unet:``) replaces the flags it names."""
    preset = dataset_spec(dataset).preset
    block = dict(OmegaConf.to_container(OmegaConf.load(PRESETS))[preset] if isinstance(preset, str) else preset)
    light = block.pop("unet", {})
    if student != "sam2":
        block.update(light)
    out = {f"-{k}": (v[0 if script == "2d" else 1] if isinstance(v, list) else v) for k, v in block.items()}
    return {k: v for k, v in out.items() if v is not None}          # null: the flag's own default


def script_rules(values: dict, given: set, script: str) -> None:
    """Defaults that depend on the script or on other settings (``values``: section -> field -> value)."""
    model, data, run, pcsw, infer = (values[s] for s in ("model", "data", "run", "pcsw", "infer"))
    if "-sam_ckpt" not in given and values["_preset_sam_ckpt"] is None:
        model["sam_ckpt"] = os.path.join("checkpoints", CKPT_FILES.get(model["sam_config"],
                                                                       "<checkpoint matching -sam_config>"))
    if "-pcsw_min_len" not in given and "-pcsw_min_len" not in values["_preset"]:
        pcsw["min_len"] = 2 if script == "2d" else 1
    if "-pcsw_multifocal" not in given and "-pcsw_multifocal" not in values["_preset"]:
        pcsw["multifocal"] = script == "3d"
    if "-b_u" not in given and "-b_u" not in values["_preset"]:
        run["batch_size_u"] = run["batch_size"] if script == "2d" else 1
    if "-num_workers" not in given:
        run["num_workers"] = min(8, os.cpu_count() or 1)
    if "-infer" not in given:  # one mode for every method of a network kind (-pcsw 0 changes training prompts only)
        infer["infer"] = "pcsw" if model["student"] == "sam2" else "student"
    model["freeze_encoder"] = values["optim"]["encoder_lr_mult"] == 0
    if script == "2d":
        model["memory_bank_size"] = 0     # 2D has no memory: SAM-2's config is left as it is
    data["data_path"] = data["data_path"] or dataset_spec(data["dataset"]).default_path(script)
    run["script"] = script


def _values(ns: argparse.Namespace, table: dict, given: set, preset: dict, method_conf) -> dict:
    """section -> field -> value: command line, then preset, then the field's default."""
    unknown = sorted(set(preset) - set(table))
    if unknown:
        raise ValueError(f"{PRESETS}: {', '.join(unknown)} are not flags")
    values: dict = {name: {f.name: f.default for f in dataclasses.fields(klass)}
                    for name, klass in (*SECTIONS.items(), ("method", method_conf))}
    for flag, (section, f) in table.items():
        if f.name not in values[section]:
            continue                                              # another method's setting
        attr = flag.lstrip("-")
        if flag in given:
            values[section][f.name] = getattr(ns, attr)
        elif flag in preset:
            v = preset[flag]
            values[section][f.name] = tuple(v) if isinstance(v, list) else v
    values["_preset"], values["_preset_sam_ckpt"] = preset, preset.get("-sam_ckpt")
    return values


def _section(klass, given_values: dict):
    kw = {}
    for f in dataclasses.fields(klass):
        if f.name in given_values:
            kw[f.name] = given_values[f.name]
    return klass(**kw)


def parse_config(argv: Sequence[str] | None = None, script: str = "2d") -> TrainConfig:
    """The :class:`TrainConfig` of ``argv`` (default ``sys.argv[1:]``) for ``script`` in {"2d", "3d"}, before the
    data is read (:func:`with_data` adds the classes). Exits 2 with one line on a bad flag or a combination that
    does not fit."""
    if script not in ("2d", "3d"):
        raise ValueError(f"script must be '2d' or '3d', got {script!r}")
    prog = os.path.basename(sys.argv[0]) if argv is None else f"train_{script}.py"
    parser = build_parser(prog)
    ns = parser.parse_args(argv)
    table = flag_table()
    given = {flag for flag in table if getattr(ns, flag.lstrip("-")) is not None}
    method, student = ns.method or "sss", ns.student or "sam2"
    try:
        klass = method_class(method, student, script)
    except UserError as e:
        parser.error(str(e))
    for flag, reader in SCRIPT_ONLY_FLAGS:
        if flag in given and reader != script:
            other = "train_3d.py" if script == "2d" else "train_2d.py"
            print(f"warning: {flag} is read by {other} only; train_{script}.py ignores it", file=sys.stderr)
            given.discard(flag)
    own = {f.metadata["flag"] for f in flag_fields(klass.Conf)}
    for flag in sorted(given):
        section, _ = table[flag]
        if section == "method" and flag not in own:
            readers = sorted({k.name for k in registered()
                              if flag in {f.metadata["flag"] for f in flag_fields(k.Conf)}})
            parser.error(f"{flag} is a setting of -method {' / '.join(readers)}, not of -method {method} "
                         f"(-student {student}, train_{script}.py)")
    preset = load_preset(ns.dataset or "demo", script, student)
    values = _values(ns, table, given, preset, klass.Conf)
    values["model"]["student"], values["semi"]["method"] = student, method
    script_rules(values, given, script)
    if ns.val_freq < 1:
        parser.error(f"argument -val_freq: expected a positive integer, got {ns.val_freq}")
    values["run"]["val_every"] *= ns.val_freq
    config = _build(values, klass)
    # the method's rules, for what the command line leaves out
    for section, fields in klass.defaults(config).items():
        keep = {name: v for name, v in fields.items() if _flag_of(table, section, name) not in given}
        config = _replace(config, section, keep)
    for path, value in klass.requires.items():
        section, name = path.split(".")
        flag = _flag_of(table, section, name)
        if flag in given and getattr(getattr(config, section), name) != value:
            shown = int(value) if isinstance(value, bool) else value
            parser.error(f"{flag} {_shown(getattr(getattr(config, section), name))}: {klass.requires_why}; -method "
                         f"{method} trains with {flag} {shown} (drop the flag, or use -method sss)")
        config = _replace(config, section, {name: value})
    problem = _combination_error(config)
    if problem:
        parser.error(problem)
    return config


def _shown(v):
    return int(v) if isinstance(v, bool) else v


def _flag_of(table: dict, section: str, name: str) -> str | None:
    for flag, (s, f) in table.items():
        if s == section and f.name == name:
            return flag
    return None


def _replace(config: TrainConfig, section: str, fields: dict) -> TrainConfig:
    if not fields:
        return config
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **fields)})


def _build(values: dict, klass) -> TrainConfig:
    parts = {name: _section(conf_cls, values[name]) for name, conf_cls in SECTIONS.items()}
    return TrainConfig(**parts, method=_section(klass.Conf, values["method"]))


def _combination_error(config: TrainConfig) -> str | None:
    """Why the settings do not go together (None when they do)."""
    m, infer = config.model, config.infer.infer
    light = m.student != "sam2"
    try:
        resolve_sam_config(m.sam_config)              # before any work: a typo must not wait for the data check
    except ValueError as e:
        return str(e)
    modes = ("student", "sam_refine") if light else ("coarse", "boxes", "pcsw")
    if infer not in modes:
        return f"-infer {infer} does not fit -student {m.student} (choose from {', '.join(modes)})"
    if light and (config.run.compile or m.grad_ckpt):
        return "-compile and -grad_ckpt act on SAM-2's image encoder: not with a lightweight -student"
    out_size = getattr(config.method, "out_size", None)
    if out_size is not None and out_size > 4 * m.image_size:
        return f"argument -out_size: {out_size} is larger than 4 x -image_size"
    return None


def with_data(config: TrainConfig, splits) -> TrainConfig:
    """The config with what the data says: its classes and how its images were mapped to [0, 1]."""
    k = splits.num_classes
    if config.semi.ce_weights and len(config.semi.ce_weights) != k + 1:
        raise RunSetupError(f"-ce_weights needs {k + 1} weights (background + {k} classes), got "
                                f"{len(config.semi.ce_weights)}")
    return config.replace(model={"num_classes": k},
                          data={"class_names": tuple(splits.class_names),
                                "intensity": tuple(splits.info.get("intensity") or ()),
                                "acdc_protocol": splits.info.get("protocols") == "acdc"})
