"""The short ``-h`` / ``--help`` of ``train_2d.py`` and ``train_3d.py``, printed without importing torch.

``train_<script>.txt`` next to this file is the common flags' help, written from the settings' metadata by
``python cfg.py --write-help`` (which also writes docs/flags.md; tests/test_help.py checks that both are what the
metadata gives today). This module is the standard library only: a script calls :func:`print_short_help` before it
imports the training code, so ``-h`` answers at once. ``--help-all`` goes through the full parser of ``cfg.py``.
"""
from __future__ import annotations

import os
import sys

__all__ = ["HELP_DIR", "help_file", "print_short_help"]

HELP_DIR = os.path.dirname(os.path.abspath(__file__))


def help_file(script: str) -> str:
    """The committed short help of ``train_<script>.py``."""
    return os.path.join(HELP_DIR, f"train_{script}.txt")


def print_short_help(argv, script: str) -> bool:
    """Print the short help when ``argv`` asks for ``-h`` / ``--help`` (and not ``--help-all``); True when it did.
    False (the full parser answers) when the text is missing."""
    if "--help-all" in argv or not any(a in ("-h", "--help") for a in argv):
        return False
    try:
        with open(help_file(script), encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return False
    sys.stdout.write(text)
    return True
