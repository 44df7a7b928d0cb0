"""The front page and the set-up script: README.md stays short, every relative link of README.md and docs/*.md
resolves (files and #anchors, GitHub-style heading slugs), and install.sh parses its flags before it installs
anything (run here with a stand-in interpreter that only records what it is asked to do: nothing is installed,
nothing is downloaded)."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = os.path.join(ROOT, "install.sh")
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"
MAX_README_LINES = 250


# ------------------------------------------------------------------------------------------------ README
def test_readme_is_under_250_lines():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        n = len(f.read().splitlines())
    assert n < MAX_README_LINES, f"README.md has {n} lines; move detail into docs/"


def test_readme_starts_with_a_virtual_environment_and_the_cpu_build():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    first = text[:text.index("python train_2d.py -dataset demo")]
    assert "python -m venv .venv && source .venv/bin/activate" in first
    assert "bash install.sh --cpu" in first


# ------------------------------------------------------------------------------------------------- links
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose_lines(text):
    """The lines of a markdown text outside fenced code blocks, inline code spans blanked."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), line)


def slug(heading):
    """GitHub's anchor of a heading: the rendered text (code and emphasis marks and link targets dropped),
    lower case, everything but letters, digits, '_', '-' and spaces removed, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # [text](target) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    seen, out = {}, set()
    inside = False
    for line in open(path, encoding="utf-8").read().splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        m = None if inside else re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(path):
    text = open(path, encoding="utf-8").read()
    for line in prose_lines(text):
        yield from (m.group(1) for m in LINK.finditer(line))


def broken_links(path):
    """The relative links of a markdown file that name a missing file or a heading its target does not have."""
    bad = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):      # http:, https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
        if not os.path.exists(dest):
            bad.append(f"{target} (no such file)")
        elif anchor and dest.endswith(".md") and anchor.lower() not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {os.path.relpath(dest, ROOT)})")
    return bad


def markdown_files():
    docs = os.path.join(ROOT, "docs")
    return ["README.md"] + sorted(os.path.join("docs", f) for f in os.listdir(docs) if f.endswith(".md"))


@pytest.mark.parametrize("md", markdown_files())
def test_every_relative_link_resolves(md):
    assert broken_links(os.path.join(ROOT, md)) == []


def test_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Custom data (`-dataset custom`)\n\n## Same\n\n## Same\n")
    (tmp_path / "page.md").write_text(
        "# Page: one\n\n"
        "[ok](other.md) [ok](other.md#custom-data--dataset-custom) [ok](other.md#same-1) [ok](#page-one)\n"
        "[gone](missing.md) [bad](other.md#no-such-heading) [bad](#nowhere) ![gone](img/x.png)\n"
        "[web](https://example.org/x.md) `[code](not-a-link.md)`\n"
        "```\n[fenced](not-a-link-either.md)\n# not a heading\n```\n")
    assert broken_links(str(tmp_path / "page.md")) == [
        "missing.md (no such file)", "other.md#no-such-heading (no heading #no-such-heading in "
        + os.path.relpath(str(tmp_path / "other.md"), ROOT) + ")",
        "#nowhere (no heading #nowhere in " + os.path.relpath(str(tmp_path / "page.md"), ROOT) + ")",
        "img/x.png (no such file)"]


def test_slugs_follow_github():
    assert slug("Method check on the real ACDC sample: `python reproduce.py acdc_cpu`") == \
        "method-check-on-the-real-acdc-sample-python-reproducepy-acdc_cpu"
    assert slug("Outputs, resume and logging") == "outputs-resume-and-logging"
    assert slug("Custom data (`-dataset custom`)") == "custom-data--dataset-custom"


# ---------------------------------------------------------------------------------------------- install.sh
@pytest.fixture
def fake_python(tmp_path):
    """An interpreter stand-in that records each call and installs nothing (``-c "import sam2"`` fails, so the
    sam2 step is recorded too)."""
    log = tmp_path / "calls.log"
    exe = tmp_path / "python"
    exe.write_text('#!/usr/bin/env bash\necho "$*" >> "%s"\n[[ "$1" == "-c" ]] && exit 1\nexit 0\n' % log)
    exe.chmod(0o755)
    return str(exe), log


def install(*args, python=None):
    env = dict(os.environ)
    if python:
        env["PYTHON"] = python
    return subprocess.run(["bash", INSTALL, *args], capture_output=True, text=True, timeout=60, env=env)


def calls(log):
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("args", [["--bogus"], ["--dev", "--bogus"], ["--cpu", "-x"], ["dev"]])
def test_install_rejects_an_unknown_flag_in_one_line_before_anything_runs(fake_python, args):
    exe, log = fake_python
    r = install(*args, python=exe)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and args[-1] in r.stderr
    assert calls(log) == []


def test_install_help_mentions_every_flag_and_installs_nothing(fake_python):
    exe, log = fake_python
    r = install("--help", python=exe)
    assert r.returncode == 0
    for word in ("--cpu", "--dev", "download.pytorch.org/whl/cpu", "venv"):
        assert word in r.stdout
    assert calls(log) == []


DEFAULT_CALLS = ['-m pip install torch>=2.5.1 torchvision>=0.20.1', '-c import sam2',
                 '-m pip install --no-build-isolation sam2==1.1.0', '-m pip install -r requirements.txt']
DEV_CALL = '-m pip install -r requirements-dev.txt'


@pytest.mark.parametrize("args,expected", [
    ([], DEFAULT_CALLS),
    (["--dev"], DEFAULT_CALLS + [DEV_CALL]),
    (["--cpu"], [f"-m pip install {CPU_INDEX} torch>=2.5.1 torchvision>=0.20.1"] + DEFAULT_CALLS[1:]),
    (["--cpu", "--dev"], [f"-m pip install {CPU_INDEX} torch>=2.5.1 torchvision>=0.20.1"] + DEFAULT_CALLS[1:]
     + [DEV_CALL]),
    (["--dev", "--cpu"], [f"-m pip install {CPU_INDEX} torch>=2.5.1 torchvision>=0.20.1"] + DEFAULT_CALLS[1:]
     + [DEV_CALL]),
])
def test_install_steps_per_flag(fake_python, args, expected):
    """The default (CI's ``--dev``) installs what it always did; ``--cpu`` changes only the torch step, which comes
    first, from PyTorch's CPU index."""
    exe, log = fake_python
    r = install(*args, python=exe)
    assert r.returncode == 0, r.stderr
    assert calls(log) == expected
