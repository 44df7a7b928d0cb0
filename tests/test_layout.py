"""The library imports only downward: nothing under sam2_train/ imports the scripts' layer; scripts import only
the library (never another script)."""
import ast
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"cfg", "run_training", "evaluate", "predict", "reproduce", "train_2d", "train_3d"}
UPWARD = SCRIPTS | {"dataset"}


def imported_modules(path: str) -> set[str]:
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def library_files():
    for dp, _, files in os.walk(os.path.join(ROOT, "sam2_train")):
        yield from (os.path.join(dp, f) for f in files if f.endswith(".py"))


def test_library_never_imports_upward():
    bad = {os.path.relpath(p, ROOT): sorted(imported_modules(p) & UPWARD) for p in library_files()}
    assert {p: m for p, m in bad.items() if m} == {}


def test_import_check_catches_an_upward_import(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import torch\nfrom dataset.transforms import x\nimport cfg as c\n")
    assert imported_modules(str(p)) & UPWARD == {"dataset", "cfg"}


def test_scripts_import_only_the_library():
    """A thin script imports the library and the data layer, never another script (``cfg`` is the flag layer
    that train_*.py / run_training.py share, so those may import it, and so may reproduce.py, whose --dry-run reads
    each cell's training command exactly as the training script will)."""
    allowed = {"train_2d": {"run_training"}, "train_3d": {"run_training"}, "run_training": {"cfg"},
               "reproduce": {"cfg"}, "evaluate": set(), "predict": set(), "cfg": set()}
    bad = {s: sorted((imported_modules(os.path.join(ROOT, f"{s}.py")) & SCRIPTS) - allowed[s] - {s})
           for s in SCRIPTS}
    assert {s: m for s, m in bad.items() if m} == {}


def test_library_is_split_into_model_engine_evaluation_methods():
    lib = os.path.join(ROOT, "sam2_train")
    dirs = {d for d in os.listdir(lib) if not d.startswith("__") and os.path.isdir(os.path.join(lib, d))}
    assert {"model", "engine", "evaluation", "methods"} <= dirs
    top = [f for f in os.listdir(lib) if f.endswith(".py") and f != "__init__.py"]
    assert top == []
    methods = set(os.listdir(os.path.join(lib, "methods")))
    assert {"registry.py", "base.py", "weak_to_strong.py", "sss_2d.py", "sss_3d.py", "unet"} <= methods
    unet = set(os.listdir(os.path.join(lib, "methods", "unet")))
    assert {"mean_teacher.py", "weak_to_strong.py", "knowledge_mining.py", "semisam.py", "sam_match.py"} <= unet
    for gone in ("func_2d", "func_3d", os.path.join("sam2_train", "model", "semi.py"),
                 os.path.join("sam2_train", "engine", "runtime.py")):
        assert not os.path.exists(os.path.join(ROOT, gone)), gone


def layout_problems(readme: str, root: str, top: list[str]) -> list[str]:
    """What the README's "Repository layout" table gets wrong about the tree: a path in its first column that does
    not exist, a top-level entry of ``top`` the table never names."""
    section = readme.split("## Repository layout", 1)[-1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    if not rows:
        return ["no layout table"]
    named = [p for row in rows for p in re.findall(r"`([^`]+)`", row.split("|")[1])]
    anywhere = re.findall(r"`([^`]+)`", "\n".join(rows))
    return ([f"{p}: no such path" for p in named if not os.path.exists(os.path.join(root, p))]
            + [f"{e}: not in the table" for e in top if not any(n == e or n.startswith(e + "/") for n in anywhere)])


def test_readme_layout_table_matches_the_tree():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    top = sorted({f.split("/")[0] for f in out.stdout.splitlines()} - {"README.md", ".gitignore"})
    top = [e for e in top if os.path.exists(os.path.join(ROOT, e))]
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert layout_problems(readme, ROOT, top) == []


def test_layout_check_catches_a_missing_path_and_an_unlisted_entry(tmp_path):
    (tmp_path / "a.py").write_text("")
    (tmp_path / ".ci").mkdir()
    readme = ("# x\n\n## Repository layout\n\n| path | job |\n|---|---|\n| `a.py`, `gone/` | things, `c.toml` |\n"
              "| `.ci/run` | ci |\n\n## Next\n| `b.py` |\n")
    assert layout_problems(readme, str(tmp_path), ["a.py", ".ci", "b.py", "c.toml"]) == [
        "gone/: no such path", ".ci/run: no such path", "b.py: not in the table"]
