"""The library imports only downward: nothing under sam2_train/ imports the scripts' layer; scripts import only
the library (never another script)."""
import ast
import os

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
    that train_*.py / run_training.py share, so those may import it)."""
    allowed = {"train_2d": {"run_training"}, "train_3d": {"run_training"}, "run_training": {"cfg"},
               "reproduce": set(), "evaluate": set(), "predict": set(), "cfg": set()}
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
