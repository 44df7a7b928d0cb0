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
import textwrap
from typing import Sequence

from omegaconf import OmegaConf

from dataset.registry import dataset_names, dataset_spec
from sam2_train.engine.config import SECTIONS, TrainConfig
from sam2_train.engine.errors import RunSetupError, UserError
from sam2_train.engine.settings import (OneLineParser, flag_fields, lower_choice, nonneg_int, positive_int, str2bool,
                                        unit_float)
from sam2_train.engine.settings import image_size as size_multiple_of_32
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


def build_parser(prog: str | None = None, script: str | None = None) -> OneLineParser:
    """The parser of every flag; values not given are None (so defaults can be resolved in order). Its help
    (``--help-all``) lists the flags ``train_<script>.py`` reads (:func:`script_flags`; every flag when ``script`` is
    None); the others are still parsed (and reported by :func:`parse_config`)."""
    shown = script_flags(script) if script else None
    p = OneLineParser(prog=prog, add_help=False, usage="%(prog)s [-h] [--help-all] [-flag VALUE ...]",
                      description="SSS: semi-supervised SAM-2 for medical image segmentation.",
                      epilog="Booleans take 0/1 (also true/false, yes/no); a flag alone means 1. Every flag with its "
                             "values and default: docs/flags.md.")
    p.add_argument("--help-all", action="help", dest="help", help="this list (-h: the common flags only)")
    p.add_argument("-h", "--help", action="help", help=argparse.SUPPRESS)   # train_*.py answer -h themselves
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    seed = groups[GROUPS[0]]
    for flag, kw, text in _SEED_FLAGS:
        seed.add_argument(flag, **kw, help=text + f" (default {kw['default']})")
    for flag, (section, f) in flag_table().items():
        meta = f.metadata
        group = groups[_GROUP_OF.get(meta["group"], meta["group"] or "method")]
        text = _help(flag, meta, f, script)
        kw = {"type": meta["type"] or str, "default": None,
              "help": text if shown is None or flag in shown else argparse.SUPPRESS,
              "metavar": _metavar(flag, meta, script)}
        if meta["type"] is str2bool:
            kw.update(nargs="?", const=True)
        if flag == "-dataset":
            kw["type"] = lower_choice(dataset_names())
        elif flag == "-method":
            kw["type"] = lower_choice(method_names())
        group.add_argument(flag, **kw)
    return p


# The two seed flags that are no setting: (flag, parser keywords, help).
_SEED_FLAGS = (("-net", {"type": lower_choice(("sam2",)), "default": "sam2", "metavar": "{sam2}"},
                "network family (only sam2)"),
               ("-val_freq", {"type": int, "default": 1, "metavar": "N"},
                "validate every N x -val_every iterations (the seed commands' 1 = every -val_every)"))
# Help of the settings whose field declares none (the short -h lists them).
_FALLBACK_HELP = {"-log_dir": "where run folders are made: <log_dir>/<exp_name>_<timestamp>/",
                  "-device": "auto: CUDA when there is a GPU, else the CPU",
                  "-seed": "random seed of the run",
                  "-weight_decay": "weight decay of the optimiser", "-sched": "learning-rate schedule"}
_INT_TYPES = (int, positive_int, nonneg_int, size_multiple_of_32)
_METAVARS = {"-exp_name": "NAME", "-resume": "CKPT", "-pretrain": "CKPT", "-log_dir": "DIR", "-class_names": "A,B,...",
             "-hu_window": "LOW,HIGH", "-dfe_levels": "N,N,..."}


def script_flags(script: str) -> list[str]:
    """The flags ``train_<script>.py`` reads, in parser order: not those of :data:`SCRIPT_ONLY_FLAGS` for the other
    script, a method's own only when a method of this script declares it, and ``-student`` and the SAM-2 guide's
    only when the script trains a lightweight student."""
    other = {flag for flag, reader in SCRIPT_ONLY_FLAGS if reader != script}
    classes = [k for k in registered() if script in k.scripts]
    own = {f.metadata["flag"] for k in classes for f in flag_fields(k.Conf)}
    light = any(s != "sam2" for k in classes for s in k.students)
    out = [flag for flag, _, _ in _SEED_FLAGS]
    for flag, (section, f) in flag_table().items():
        if flag in other or (section == "method" and flag not in own):
            continue
        if not light and (flag == "-student" or f.metadata["group"] == "SAM-2 guide"):
            continue
        out.append(flag)
    return out


def _choices(flag: str, meta: dict, script: str | None) -> tuple[str, ...] | None:
    """The values a flag takes (``-method``: those of the script)."""
    if flag == "-dataset":
        return dataset_names()
    if flag == "-method":
        names = {k.name for k in registered() if script is None or script in k.scripts}
        return tuple(n for n in method_names() if n in names)
    return meta["choices"]


def _metavar(flag: str, meta: dict, script: str | None) -> str:
    choices = _choices(flag, meta, script)
    if meta["metavar"]:
        return meta["metavar"]
    if meta["type"] is str2bool:
        return "{0,1}"
    if choices and len(",".join(choices)) <= 24:
        return "{" + ",".join(choices) + "}"
    if flag in _METAVARS:
        return _METAVARS[flag]
    if meta["path"]:
        return "PATH"
    if meta["type"] in _INT_TYPES:
        return "N"
    if meta["type"] in (float, unit_float):
        return "X"
    return flag.lstrip("-").upper()


def shown_value(v) -> str:
    """A default as it is typed on the command line: 0/1 for booleans, ``0,80`` for tuples, 1 for 1.0."""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (tuple, list)):
        return ",".join(shown_value(x) for x in v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _default(meta: dict, f: dataclasses.Field) -> str | None:
    """The default shown in the help; None where the preset or a rule of cfg.py gives it (the help says)."""
    if meta["preset"] or f.default in (None, "", ()):
        return None
    return shown_value(f.default)


def _help(flag: str, meta: dict, f: dataclasses.Field, script: str | None = None) -> str:
    text = meta["help"] or _FALLBACK_HELP.get(flag, "")
    choices = _choices(flag, meta, script)
    if choices and not _metavar(flag, meta, script).startswith("{"):
        text = f"{{{','.join(choices)}}} " + text
    default = _default(meta, f)
    if default is not None:
        text += f" (default {default})"
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
    parser = build_parser(prog, script)
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


# ---------------------------------------------------------------------------------------------- help texts
# train_*.py -h prints the common flags from sam2_train/cli_help/train_<script>.txt without importing torch;
# `python cfg.py --write-help` writes those files and the flag tables of docs/flags.md from the settings' metadata
# (tests/test_help.py fails when they differ from what the metadata gives).
_ROOT = os.path.dirname(os.path.abspath(__file__))
HELP_DIR = os.path.join(_ROOT, "sam2_train", "cli_help")
FLAGS_DOC = os.path.join(_ROOT, "docs", "flags.md")
DOC_BEGIN, DOC_END = "<!-- flag tables: written by `python cfg.py --write-help` -->", "<!-- end of flag tables -->"
HELP_WIDTH, HELP_COLUMN = 80, 24
COMMON_FLAGS = (("data", ("-dataset", "-data_path", "-labeled_num", "-labeled_ratio")),
                ("method and model", ("-method", "-student", "-sam_config", "-sam_ckpt", "-image_size")),
                ("budget", ("-b", "-max_iters", "-val_every")),
                ("output and device", ("-exp_name", "-log_dir", "-device", "-resume")))
HELP_EXAMPLES = {
    "2d": ("python train_2d.py -dataset demo",
           "python train_2d.py -dataset acdc -data_path ./data/ACDC -labeled_num 7 -exp_name ACDC_SSS"),
    "3d": ("python train_3d.py -dataset demo",
           "python train_3d.py -dataset bhsd -data_path ./data/bhsd -labeled_ratio 0.1 -exp_name BHSD_SSS")}
# The short -h's text of the common flags whose setting's help is longer (a dict: one text per script).
_SHORT_HELP = {
    "-labeled_num": {"2d": "labeled patients or volumes (preset: ACDC 3, demo 2, else all)",
                     "3d": "labeled volumes (preset: ACDC 3, else every training volume)"},
    "-labeled_ratio": "BHSD/custom: labeled fraction of the training volumes",
    "-sam_config": "SAM-2 model: sam2_hiera_{t,s,b+,l}, sam2.1_hiera_{t,s,b+,l} or a yaml (preset)",
    "-sam_ckpt": "SAM-2 weights, 'none': random (default: checkpoints/<file of -sam_config>; demo none)",
    "-image_size": "input size, a multiple of 32 (preset: 1024; demo 128)",
    "-student": "sam2, or a U-Net / U-Net++ trained from scratch",
    "-b": {"2d": "labeled slices per step (preset: 4)", "3d": "labeled clips per step (preset: 1)"},
    "-max_iters": "training iterations (preset: ACDC 30000, BHSD 20000)",
    "-val_every": "validate every N iterations (preset: ACDC, BHSD 1000)",
    "-exp_name": "run name: outputs in <log_dir>/<exp_name>_<timestamp>/",
    "-log_dir": "the folder of the run folders",
    "-device": "auto: CUDA if there is a GPU",
    "-slab_len": "unlabeled slices come in slabs of this many neighbours",
    "-protocol": "resize rule of the evaluation (SSL4MIS's or UniMatch's)",
    "-prompt": "ground-truth prompt type on labeled clips",
    "-fg_oversample": "probability that a labeled clip lies over a labeled slice (preset: 0.33; demo 0.67)",
    "-prompt_freq": "prompt every k-th of each class's prompted slices",
    "-video_length": "training clip length in slices (preset: 8; demo 6)",
    "-memory_bank_size": "prompted frames kept in SAM-2's memory bank",
}


def _method_help(script: str) -> str:
    """-method in the short help: the methods of the script, by student."""
    by_student: dict[str, list[str]] = {}
    for k in registered():
        if script in k.scripts:
            for s in k.students:
                by_student.setdefault("sam2" if s == "sam2" else "light", []).append(k.name)
    text = "SAM-2: " + ", ".join(dict.fromkeys(by_student.get("sam2", ())))
    if by_student.get("light"):
        text += "; -student unet|unetpp: " + ", ".join(dict.fromkeys(by_student["light"]))
    return text


def _rows(lines: list[str], head: str, text: str) -> None:
    """argparse's layout of one flag: help at column 24 (below the flag when the flag is longer)."""
    wrapped = textwrap.wrap(text, HELP_WIDTH - HELP_COLUMN, break_on_hyphens=False, break_long_words=False) or [""]
    head = "  " + head
    if len(head) + 2 <= HELP_COLUMN:
        lines.append(head.ljust(HELP_COLUMN) + wrapped.pop(0))
    else:
        lines.append(head)
    lines.extend(" " * HELP_COLUMN + w for w in wrapped)


def short_help(script: str) -> str:
    """The text of ``train_<script>.py -h``: usage, examples, the common flags and the script's own."""
    table, own = flag_table(), script_flags(script)
    name = f"train_{script}.py"
    lines = [f"usage: {name} [-h] [--help-all] [-flag VALUE ...]", "",
             {"2d": "Train SSS on 2D slices: ACDC, your own folders or the demo phantoms.",
              "3d": "Train SSS on volumes (SAM-2's video memory): BHSD, your own NIfTI or the demo."}[script],
             f"The common flags; all {len(own)}: python {name} --help-all, or docs/flags.md.", "", "examples:"]
    for example in HELP_EXAMPLES[script]:         # a long one goes on over lines ending in " \\"
        parts = textwrap.wrap(example, HELP_WIDTH - 6, subsequent_indent="    ", break_on_hyphens=False)
        lines += ["  " + p + (" \\" if i < len(parts) - 1 else "") for i, p in enumerate(parts)]
    only = [flag for flag, reader in SCRIPT_ONLY_FLAGS if reader == script]
    for title, flags in (*COMMON_FLAGS, (f"{name} only", only)):
        lines += ["", f"{title}:"]
        for flag in (flag for flag in flags if flag in own):
            f = table[flag][1]
            short = _SHORT_HELP.get(flag) or f.metadata["help"] or _FALLBACK_HELP.get(flag, "")
            text = _method_help(script) if flag == "-method" else short.get(script) if isinstance(short, dict) \
                else short
            default = _default(f.metadata, f)
            _rows(lines, f"{flag} {_metavar(flag, f.metadata, script)}",
                  text + (f" (default {default})" if default is not None else ""))
    lines += ["", "Booleans take 0/1; a flag alone means 1. Dataset presets: configs/presets.yaml."]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def flags_markdown() -> str:
    """The flag tables of docs/flags.md: one per help group, a row per flag (values, default, scripts, help)."""
    table, by_script = flag_table(), {s: set(script_flags(s)) for s in ("2d", "3d")}
    rows: dict[str, list[str]] = {name: [] for name in GROUPS}

    def scripts(flag):
        return ", ".join(f"{s.upper()}" for s in ("2d", "3d") if flag in by_script[s])

    for flag, kw, text in _SEED_FLAGS:
        rows[GROUPS[0]].append(f"| `{flag}` | {kw['metavar']} | {kw['default']} | {scripts(flag)} | "
                               f"{_md(text)} |")
    for flag, (section, f) in table.items():
        meta = f.metadata
        group = _GROUP_OF.get(meta["group"], meta["group"] or "method")
        choices = _choices(flag, meta, None)
        values = "{" + ",".join(choices) + "}" if choices else _metavar(flag, meta, None)
        default = _default(meta, f)
        text = meta["help"] or _FALLBACK_HELP.get(flag, "")
        shown = "preset" if meta["preset"] else (default or "")
        rows[group].append(f"| `{flag}` | {_md(values)} | {_md(shown)} | {scripts(flag)} | {_md(text)} |")
    out = [DOC_BEGIN, ""]
    for group in GROUPS:
        out += [f"### {group[0].upper() + group[1:]}", "", "| flag | values | default | script | help |",
                "|---|---|---|---|---|", *rows[group], ""]
    out.append(DOC_END)
    return "\n".join(out)


def help_files() -> dict[str, str]:
    """path -> the text ``python cfg.py --write-help`` writes there (docs/flags.md: its flag tables replaced)."""
    doc = open(FLAGS_DOC, encoding="utf-8").read()
    start, end = doc.index(DOC_BEGIN), doc.index(DOC_END) + len(DOC_END)
    out = {os.path.join(HELP_DIR, f"train_{s}.txt"): short_help(s) for s in ("2d", "3d")}
    out[FLAGS_DOC] = doc[:start] + flags_markdown() + doc[end:]
    return out


def write_help() -> list[str]:
    """Write :func:`help_files`; the paths that changed."""
    changed = []
    for path, text in help_files().items():
        old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
        if old != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            changed.append(path)
    return changed


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-help"]:
        sys.exit("usage: python cfg.py --write-help   (writes sam2_train/cli_help/train_*.txt and docs/flags.md's "
                 "flag tables from the settings)")
    for p in write_help() or ["nothing changed"]:
        print(p)
