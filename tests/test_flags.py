"""No flag is parsed and ignored: every cfg.py flag is read by the code, -train_vis is gone, and a flag only
the other script reads is reported."""
import inspect
import os
import re
import subprocess

import pytest

import cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code_outside_cfg() -> str:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    code = "\n".join(open(os.path.join(ROOT, f)).read() for f in files
                      if not f.startswith("tests/") and f != "cfg.py" and os.path.isfile(os.path.join(ROOT, f)))
    # cfg.py itself counts only where it turns flags into settings, not where it declares them
    return code + "\n" + inspect.getsource(cfg.resolve_defaults) + inspect.getsource(cfg.to_config)


def test_every_flag_is_read_somewhere():
    code = _code_outside_cfg()
    dests = [a.dest for a in cfg.build_parser()._actions if a.dest != "help"]
    unread = [d for d in dests if not re.search(rf"args\.{re.escape(d)}\b|[\"']{re.escape(d)}[\"']", code)]
    assert unread == []


def test_train_vis_is_gone():
    with pytest.raises(SystemExit) as e:
        cfg.parse_args(["-train_vis", "1"])
    assert e.value.code == 2


@pytest.mark.parametrize("script, argv, warned", [
    ("2d", ["-video_length", "4", "-prompt", "click"], ["-prompt", "-video_length"]),
    ("2d", ["-slab_len", "2", "-protocol", "unimatch"], []),
    ("3d", ["-slab_len", "2", "-protocol", "unimatch", "-memory_bank_size", "4"], ["-slab_len", "-protocol"]),
])
def test_flags_of_the_other_script_are_reported(capsys, script, argv, warned):
    args = cfg.parse_args(argv, script=script)
    err = capsys.readouterr().err
    got = sorted(re.findall(r"warning: (-\w+) is read by", err))
    assert got == sorted(warned), err
    assert args.script == script
