"""Settings declared once: a config field carries its command-line flag, help, parser and kind.

A field of a config dataclass is made with :func:`setting`; its metadata says

* ``flag``: the command-line flag (``"-lr"``; None: not a flag, e.g. a value recorded from the data);
* ``help`` and ``type`` (the parser of the flag's string: :func:`positive_int`, :func:`str2bool`, ...);
* ``kind``: ``"arch"`` (defines the network: a checkpoint and the flags of the run that reads it must agree),
  ``"run"`` (changes what a run computes: a resumed run refuses a change unless ``-resume_force 1``) or
  ``"free"`` (where outputs go, how fast data is read, logging: may change on resume);
* ``preset``: the flag's parser default is None and the value comes from the dataset's preset or a rule of
  ``cfg.py`` (the dataclass default is what a run gets when neither gives one).

``cfg.py`` builds the parser from these fields (:func:`flag_fields`), the library never sees argparse. The
plain-data round trip of a config is :func:`to_plain` / :func:`from_plain` (tuples come back as tuples).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterator, Sequence

__all__ = ["ARCH", "RUN", "FREE", "OneLineParser", "setting", "flag_fields", "to_plain", "from_plain", "str2bool",
           "lower_choice", "positive_int", "nonneg_int", "unit_float", "image_size", "float_pair", "weight_list",
           "int_list", "add_device_flags"]

ARCH, RUN, FREE = "arch", "run", "free"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump), exit status 2 (every script's parser), and
    that takes no abbreviated flag (``-max_iter`` is a typo, not ``-max_iters``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _get_option_tuples(self, option_string):
        # argparse still prefix-matches single-dash flags when allow_abbrev is False (for -xvf bundles): none here
        return [] if not self.allow_abbrev else super()._get_option_tuples(option_string)

    def error(self, message: str):  # noqa: D401 - argparse API
        message = message.replace("\n", " ")
        self.exit(2, f"{self.prog}: error: {message}\n")
_MISSING = dataclasses.MISSING


def setting(default: Any = _MISSING, *, flag: str | None = None, help: str = "", kind: str = RUN,
            type: Callable[[str], Any] | None = None, choices: Sequence[str] | None = None, preset: bool = False,
            group: str | None = None, metavar: str | None = None, path: bool = False):
    """A dataclass field with its flag metadata (see the module docstring); ``choices`` makes the flag a
    case-insensitive choice (:func:`lower_choice`); ``group``: the help section of the flag; ``path``: a file
    system path (two spellings of one path, ``./data/x`` and ``data/x/``, are the same setting)."""
    if kind not in (ARCH, RUN, FREE):
        raise ValueError(f"setting kind must be {ARCH}, {RUN} or {FREE}, got {kind!r}")
    meta = {"flag": flag, "help": help, "kind": kind, "type": lower_choice(choices) if choices else type,
            "choices": tuple(choices) if choices else None, "preset": preset, "group": group, "metavar": metavar,
            "path": path}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use an immutable default (a tuple) for a setting")
    return dataclasses.field(default=default, metadata=meta)


def flag_fields(cls) -> Iterator[dataclasses.Field]:
    """The fields of config dataclass ``cls`` that have a command-line flag."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("flag"):
            yield f


def kind_of(f: dataclasses.Field) -> str:
    return f.metadata.get("kind", RUN)


def to_plain(conf) -> dict:
    """A config dataclass as plain JSON-able data (nested dataclasses as dicts, tuples as lists)."""
    out = {}
    for f in dataclasses.fields(conf):
        v = getattr(conf, f.name)
        out[f.name] = to_plain(v) if dataclasses.is_dataclass(v) else _plain_value(v)
    return out


def _plain_value(v):
    if isinstance(v, (tuple, list)):
        return [_plain_value(x) for x in v]
    return v


def from_plain(cls, data: dict, where: str):
    """``cls(**data)`` from :func:`to_plain` output: lists become tuples where the default is a tuple or the
    annotation says tuple; a key that is not a field raises ``ValueError`` naming ``where``; a missing key takes
    the field's default."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: {', '.join(unknown)} not a setting of {cls.__name__}")
    kw = {}
    for name, value in data.items():
        f = names[name]
        tuple_like = isinstance(f.default, tuple) or "tuple" in str(f.type)
        if isinstance(value, list) and tuple_like:
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kw[name] = value
    return cls(**kw)


# ---------------------------------------------------------------------------------------------- flag parsers
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
            raise argparse.ArgumentTypeError(f"invalid value {value!r} (allowed: {', '.join(choices)})")
        return v
    parse.choices = tuple(choices)
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
        raise argparse.ArgumentTypeError(f"must be a multiple of 32 (SAM-2's Hiera needs it), got {v}")
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


def add_device_flags(parser) -> None:
    """``-device``, ``-gpu_device`` and ``-amp`` of the scripts that load a trained model (evaluate.py, predict.py)."""
    parser.add_argument("-device", type=lower_choice(("auto", "cuda", "cpu")), default="auto",
                        metavar="{auto,cuda,cpu}", help="auto: CUDA if there is a GPU (default auto)")
    parser.add_argument("-gpu_device", type=nonneg_int, default=0, metavar="N", help="CUDA device index (default 0)")
    parser.add_argument("-amp", type=lower_choice(("auto", "bf16", "off")), default="auto", metavar="{auto,bf16,off}",
                        help="auto: bf16 autocast on CUDA, off on CPU (default auto)")
