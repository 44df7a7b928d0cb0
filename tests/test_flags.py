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
    return "\n".join(open(os.path.join(ROOT, f)).read() for f in files
                     if not f.startswith("tests/") and f != "cfg.py" and os.path.isfile(os.path.join(ROOT, f)))


def test_every_flag_is_read_somewhere():
    """A flag is a config field (cfg.flag_table): the library reads that field (an attribute access, not a
    call of a same-named method); a flag that is no field is read by cfg.parse_config itself, unless its parser
    admits one value only (``-net sam2``: checked, nothing to read)."""
    code = _code_outside_cfg()
    table = cfg.flag_table()
    parse = inspect.getsource(cfg.parse_config)
    unread = []
    for action in cfg.build_parser()._actions:
        if action.dest == "help":
            continue
        flag = action.option_strings[0]
        if flag in table:
            name = table[flag][1].name
            if not re.search(rf"\.{re.escape(name)}\b(?!\s*\()", code):
                unread.append(flag)
        elif not re.search(rf"\bns\.{re.escape(action.dest)}\b", parse):
            if len(getattr(action.type, "choices", ())) != 1:
                unread.append(flag)
    assert unread == []
    with pytest.raises(SystemExit) as e:  # the one-value flag does check its value
        cfg.parse_config(["-net", "unet"])
    assert e.value.code == 2


def test_train_vis_is_gone():
    with pytest.raises(SystemExit) as e:
        cfg.parse_config(["-train_vis", "1"])
    assert e.value.code == 2


@pytest.mark.parametrize("script, argv, warned", [
    ("2d", ["-video_length", "4", "-prompt", "click"], ["-prompt", "-video_length"]),
    ("2d", ["-slab_len", "2", "-protocol", "unimatch"], []),
    ("3d", ["-slab_len", "2", "-protocol", "unimatch", "-memory_bank_size", "4"], ["-slab_len", "-protocol"]),
])
def test_flags_of_the_other_script_are_reported(capsys, script, argv, warned):
    config = cfg.parse_config(argv, script=script)
    err = capsys.readouterr().err
    got = sorted(re.findall(r"warning: (-\w+) is read by", err))
    assert got == sorted(warned), err
    assert config.run.script == script
