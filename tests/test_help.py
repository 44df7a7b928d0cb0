"""``-h`` of the training scripts: the common flags in under 60 lines, each script's own, without importing torch;
``--help-all``: every flag the script reads; the committed help texts and docs/flags.md are what the settings'
metadata gives today (``python cfg.py --write-help`` rewrites them); every flag of evaluate.py and predict.py has
help."""
import os
import re
import shlex
import subprocess
import sys

import pytest

import cfg
import evaluate
import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OTHER = {"2d": "3d", "3d": "2d"}


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _only(script):
    return [flag for flag, reader in cfg.SCRIPT_ONLY_FLAGS if reader == script]


def _flags_in(text):
    return set(re.findall(r"^ {2}(-\w+)", text, flags=re.M))


def test_committed_help_is_what_the_settings_give():
    """sam2_train/cli_help/train_*.txt and docs/flags.md's tables equal a fresh generation (else: run
    ``python cfg.py --write-help`` and commit the result)."""
    stale = [os.path.relpath(path, ROOT) for path, text in cfg.help_files().items()
             if not os.path.exists(path) or open(path, encoding="utf-8").read() != text]
    assert stale == [], f"stale help texts: {stale}; run python cfg.py --write-help"


@pytest.mark.parametrize("script", ["2d", "3d"])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_short_help_is_short_own_and_without_torch(script, flag):
    """The short help: exit 0, under 60 lines of at most 80 characters, the common flags and this script's own
    ones, none of the other script's, and no torch (nor SAM-2, hydra or numpy) imported on the way."""
    r = _run("-X", "importtime", f"train_{script}.py", flag)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert 10 < len(lines) < 60 and max(map(len, lines)) <= 80
    imported = {ln.split("|")[-1].strip().split(".")[0] for ln in r.stderr.splitlines() if ln.startswith("import ")}
    assert imported and not imported & {"torch", "hydra", "numpy", "sam2", "omegaconf", "run_training", "cfg"}
    shown = _flags_in(r.stdout)
    common = {flag for _, flags in cfg.COMMON_FLAGS for flag in flags} & set(cfg.script_flags(script))
    assert common | set(_only(script)) == shown
    assert not shown & set(_only(OTHER[script]))
    assert "{acdc,bhsd,custom,demo}" in r.stdout and "dataset/registry.py" not in r.stdout
    assert "--help-all" in r.stdout
    assert r.stdout == open(os.path.join(ROOT, "sam2_train", "cli_help", f"train_{script}.txt")).read()


def test_short_help_wins_wherever_it_stands_but_not_over_help_all(capsys):
    from sam2_train.cli_help import print_short_help
    assert print_short_help(["-dataset", "acdc", "-h"], "2d") and "usage: train_2d.py" in capsys.readouterr().out
    assert not print_short_help(["-h", "--help-all"], "2d") and not print_short_help(["-dataset", "acdc"], "2d")
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("script", ["2d", "3d"])
def test_help_all_lists_every_flag_of_the_script(script, capsys):
    """``--help-all`` (the full parser) lists what the script reads, not the other script's own flags; those are
    still accepted (and reported as ignored)."""
    with pytest.raises(SystemExit) as e:
        cfg.parse_config(["--help-all"], script=script)
    assert e.value.code == 0
    out = capsys.readouterr().out
    shown = _flags_in(out) - {"--help-all"}
    assert shown == set(cfg.script_flags(script))
    assert not shown & set(_only(OTHER[script])) and set(_only(script)) <= shown
    if script == "3d":           # no lightweight student in 3D: neither -student nor the SAM-2 guide's flags
        assert not shown & {"-student", "-guide_size", "-km_points", "-km_start", "-sam_lambda"}
    assert "(default False)" not in out and "(default True)" not in out and "(0.0, 80.0)" not in out
    assert "-hu_window LOW,HIGH" in out and "(default 0,80)" in out and "-vis [{0,1}]" in out


def test_help_all_through_the_script():
    r = _run("train_3d.py", "--help-all", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "-prompt_freq" in r.stdout and "-slab_len" not in r.stdout and len(r.stdout.splitlines()) > 60


@pytest.mark.parametrize("value, shown", [(True, "1"), (False, "0"), ((0.0, 80.0), "0,80"), ((0, 1, 2), "0,1,2"),
                                          (1.0, "1"), (0.0001, "0.0001"), ("pixel", "pixel")])
def test_defaults_are_shown_as_typed(value, shown):
    assert cfg.shown_value(value) == shown


@pytest.mark.parametrize("script", ["2d", "3d"])
def test_help_examples_parse(script):
    for example in cfg.HELP_EXAMPLES[script]:
        argv = shlex.split(example)
        assert argv[:2] == ["python", f"train_{script}.py"]
        assert cfg.parse_config(argv[2:], script=script).run.script == script


def test_flags_doc_has_a_row_per_flag_with_its_scripts():
    doc = open(os.path.join(ROOT, "docs", "flags.md"), encoding="utf-8").read()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(-\w+)` \|[^|]*\|[^|]*\| ([^|]*) \|", doc, re.M)}
    every = set(cfg.script_flags("2d")) | set(cfg.script_flags("3d"))
    assert set(rows) >= every
    assert rows["-slab_len"] == "2D" and rows["-prompt"] == "3D" and rows["-dataset"] == "2D, 3D"


@pytest.mark.parametrize("module", [evaluate, predict])
def test_every_flag_of_evaluate_and_predict_has_help(module, monkeypatch, capsys):
    import argparse
    made = []
    real = argparse.ArgumentParser.parse_args

    def keep(self, *a, **k):
        made.append(self)
        return real(self, *a, **k)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", keep)
    with pytest.raises(SystemExit):
        module.parse(["-h"])
    capsys.readouterr()
    (parser,) = made
    missing = [a.option_strings[0] for a in parser._actions if not (a.help or "").strip()]
    assert missing == []
