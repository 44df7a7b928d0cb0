"""The library imports only downward: nothing under sam2_train/ imports the scripts' layer."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPWARD = {"cfg", "dataset", "func_2d", "func_3d", "run_training", "evaluate", "reproduce", "train_2d", "train_3d"}


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


def test_library_is_split_into_model_engine_evaluation():
    dirs = {d for d in os.listdir(os.path.join(ROOT, "sam2_train")) if not d.startswith("__")
            and os.path.isdir(os.path.join(ROOT, "sam2_train", d))}
    assert {"model", "engine", "evaluation"} <= dirs
    top = [f for f in os.listdir(os.path.join(ROOT, "sam2_train")) if f.endswith(".py") and f != "__init__.py"]
    assert top == []
    for d in ("func_2d", "func_3d"):
        assert {"step.py", "predict.py"} <= set(os.listdir(os.path.join(ROOT, d)))
