"""Static checks of the source: no dead code (vulture) and lines of at most 120 characters (ruff, ruff.toml).

Both tools are test dependencies (requirements-dev.txt, ``bash install.sh --dev``); a missing one fails here.
"""
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py")))   # cfg.py, train_2d.py, ...
WHITELIST = os.path.join("tests", "vulture_whitelist.py")


def _run(*args):
    r = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "No module named" not in r.stderr, f"{args[0]} is not installed: bash install.sh --dev\n{r.stderr}"
    return r


def test_no_dead_code():
    """vulture finds nothing in the library and the scripts that tests/vulture_whitelist.py does not explain
    (only code that is used in ways vulture cannot see goes there). 60% is vulture's lowest confidence: every
    unused function, class, method, property, attribute, variable and import is reported."""
    r = _run("vulture", "sam2_train", "dataset", *SCRIPTS, WHITELIST, "--min-confidence", "60")
    assert r.returncode == 0, ("dead code (delete it, or whitelist a false positive with its reason):\n"
                               + r.stdout + r.stderr)


def test_line_length():
    """ruff (ruff.toml: E501, line-length 120) finds no line over 120 characters in the repository's Python."""
    r = _run("ruff", "check", "--config", "ruff.toml", "--no-cache", "--output-format", "concise",
             "sam2_train", "dataset", "bench", "tests", *SCRIPTS)
    assert r.returncode == 0, "lines over 120 characters:\n" + r.stdout + r.stderr
