"""Issue 35: predict.py goes on past any failing case and never writes outside ``-out``; predict.py, evaluate.py
and training refuse an output folder they cannot write before any work; an empty ``-sam_ckpt`` says so; the
``-resume`` checkpoint is opened before the data is read. Tiny random SAM-2 checkpoint (64 px, demo ACDC data)
and small synthetic h5 / PNG cases; the tests run as root, so unwritable folders are a path under a regular file
and a read-only mount (/sys), not permission bits."""
import csv
import os
import tempfile

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import evaluate
import predict
import run_training
from sam2_train.engine.checkpoint import CheckpointError
from sam2_train.model.build import build_sam2_base
from tests._model_fixtures import TEST_CFG
from tests.test_predict import ACDC_CLASSES, make_ckpt
from tests.test_train_2d import base_args


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    from dataset.demo import ensure_demo
    tmp = tmp_path_factory.mktemp("acdc")
    root = ensure_demo(str(tmp / "demo_acdc"), "acdc", seed=0)
    return root, make_ckpt(tmp / "ck2d.pt", "2d", root, ACDC_CLASSES)


def volume(seed, depth=3):
    return np.random.default_rng(seed).random((depth, 64, 64)).astype(np.float32)


def write_h5(path, seed=0):
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=volume(seed))


def write_png_case(folder, seed=0):
    os.makedirs(folder, exist_ok=True)
    names = [f"slice_{z}.png" for z in range(3)]
    for z, name in enumerate(names):
        Image.fromarray((volume(seed)[z] * 255).astype(np.uint8)).save(os.path.join(folder, name))
    return names


def predict_main(*argv):
    return predict.main([str(a) for a in argv])


def error_lines(err):
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error:")]


def volume_cases(out):
    with open(os.path.join(out, "volumes.csv"), newline="") as f:
        return sorted({r["case"] for r in csv.DictReader(f)})


def not_called(what):
    def fail(*a, **k):
        raise AssertionError(f"{what} must not run before the check")
    return fail


def unwritable_existing_folder():
    """/sys: a folder no one, root included, can create files in (skip where it can)."""
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return "/sys"
    os.close(fd)
    os.remove(probe)
    pytest.skip("/sys is writable here")


# ------------------------------------------------------------------------------- 1: one case never stops the rest
def test_odd_case_names_do_not_stop_the_batch(acdc, tmp_path, capsys):
    """``...h5`` (case name ``..``) is refused in one line; ``....h5`` (case ``...``, an overlay name without an
    extension PIL could read) is segmented with its overlay; the other cases and volumes.csv are written."""
    _, ckpt = acdc
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    for i, name in enumerate(("...h5", "....h5", "good.h5", "zz.h5")):
        write_h5(scans / name, seed=i)
    assert predict_main("-ckpt", ckpt, "-input", scans, "-out", out, "-overlay", "1") == 1
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert str(scans / "...h5") in line and "cannot name its outputs" in line and "'..'" in line
    assert "wrote 3 of 4 case(s)" in captured.out + captured.err and "1 failed" in captured.out + captured.err
    assert sorted(os.listdir(out)) == ["....h5", "good.h5", "overlays", "volumes.csv", "zz.h5"]
    assert sorted(os.listdir(out / "overlays")) == ["....png", "good.png", "zz.png"]
    with Image.open(out / "overlays" / "....png") as im:
        assert im.format == "PNG" and im.mode == "RGB"
    assert volume_cases(out) == ["...", "good", "zz"]


def test_an_unexpected_error_skips_only_its_case(acdc, tmp_path, capsys, monkeypatch):
    """An error of any type while writing (here an OSError from the overlay of case b) is reported naming the case
    and the reason; b's prediction, already written, is removed; a and c and volumes.csv are written; status 1."""
    _, ckpt = acdc
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    for i, name in enumerate("abc"):
        write_h5(scans / f"{name}.h5", seed=i)
    real = predict.save_montage

    def montage(path, *a, **k):
        if os.path.basename(path) == "b.png":
            raise OSError(28, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(predict, "save_montage", montage)
    assert predict_main("-ckpt", ckpt, "-input", scans, "-out", out, "-overlay", "1") == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert str(scans / "b.h5") in line and "writing failed (OSError" in line and "No space left" in line
    assert sorted(os.listdir(out)) == ["a.h5", "c.h5", "overlays", "volumes.csv"]
    assert sorted(os.listdir(out / "overlays")) == ["a.png", "c.png"]
    assert volume_cases(out) == ["a", "c"]


# ------------------------------------------------------------------------------- 3: outputs stay inside -out
def test_input_dotdot_names_the_case_after_the_folder(acdc, tmp_path, monkeypatch):
    """``cd pngdir/sub && predict.py -input .. -out out``: the masks go to out/pngdir/, not out/.. (= pngdir/sub)."""
    _, ckpt = acdc
    names = write_png_case(tmp_path / "pngdir")
    (tmp_path / "pngdir" / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "pngdir" / "sub")
    assert predict_main("-ckpt", ckpt, "-input", "..", "-out", "out") == 0
    assert os.listdir(tmp_path / "pngdir" / "sub") == ["out"]
    assert sorted(os.listdir(tmp_path / "pngdir" / "sub" / "out")) == ["pngdir", "volumes.csv"]
    assert sorted(os.listdir(tmp_path / "pngdir" / "sub" / "out" / "pngdir")) == sorted(names)
    assert volume_cases(tmp_path / "pngdir" / "sub" / "out") == ["pngdir"]
    with Image.open(tmp_path / "pngdir" / "sub" / "out" / "pngdir" / names[0]) as im:
        assert im.size == (64, 64) and np.asarray(im).max() <= len(ACDC_CLASSES)


def test_output_resolving_outside_out_is_refused(acdc, tmp_path, capsys):
    """out/caseA is a symbolic link to a folder outside -out: caseA is refused in one line and nothing is written
    through the link; caseB is written; status 1."""
    _, ckpt = acdc
    scans, out, outside = tmp_path / "scans", tmp_path / "out", tmp_path / "outside"
    write_png_case(scans / "caseA", seed=1)
    names = write_png_case(scans / "caseB", seed=2)
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "caseA")
    assert predict_main("-ckpt", ckpt, "-input", scans, "-out", out) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert str(scans / "caseA") in line and "outside -out" in line and str(outside) in line
    assert os.listdir(outside) == []
    assert sorted(os.listdir(out / "caseB")) == sorted(names)
    assert volume_cases(out) == ["caseB"]


# ------------------------------------------------------------------------------- 5: unwritable output folders
def test_predict_refuses_an_out_under_a_file_before_loading_the_model(acdc, tmp_path, capsys, monkeypatch):
    _, ckpt = acdc
    write_h5(tmp_path / "a.h5")
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(predict, "load_model", not_called("loading the model"))
    out = tmp_path / "file" / "out"
    assert predict_main("-ckpt", ckpt, "-input", tmp_path / "a.h5", "-out", out) == 2
    err = capsys.readouterr().err
    assert err == f"error: -out {out} is not writable ({tmp_path / 'file'} is a file, not a folder)\n"
    out = tmp_path / "file"
    assert predict_main("-ckpt", ckpt, "-input", tmp_path / "a.h5", "-out", out) == 2
    assert capsys.readouterr().err == f"error: -out {out} is not writable (it is a file, not a folder)\n"


def test_predict_refuses_an_existing_read_only_out_before_loading_the_model(acdc, tmp_path, capsys, monkeypatch):
    _, ckpt = acdc
    out = unwritable_existing_folder()
    write_h5(tmp_path / "a.h5")
    monkeypatch.setattr(predict, "load_model", not_called("loading the model"))
    assert predict_main("-ckpt", ckpt, "-input", tmp_path / "a.h5", "-out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -out {out} is not writable (cannot create a file in {out}: ")
    assert err.count("\n") == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0o500 folder")
def test_predict_refuses_a_chmod_500_out(acdc, tmp_path, capsys, monkeypatch):
    _, ckpt = acdc
    write_h5(tmp_path / "a.h5")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    monkeypatch.setattr(predict, "load_model", not_called("loading the model"))
    try:
        assert predict_main("-ckpt", ckpt, "-input", tmp_path / "a.h5", "-out", out) == 2
    finally:
        out.chmod(0o700)
    assert capsys.readouterr().err == (f"error: -out {out} is not writable (cannot create a file in {out}: "
                                       "Permission denied)\n")


def test_evaluate_refuses_an_unwritable_log_dir_before_the_checkpoint(acdc, tmp_path, capsys, monkeypatch):
    _, ckpt = acdc
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(evaluate, "load_checkpoint", not_called("loading the checkpoint"))
    log_dir = tmp_path / "file" / "logs"
    assert evaluate.main(["-ckpt", ckpt, "-log_dir", str(log_dir)]) == 2
    assert capsys.readouterr().err == (f"error: -log_dir {log_dir} is not writable ({tmp_path / 'file'} is a "
                                       "file, not a folder)\n")
    ro = unwritable_existing_folder()
    assert evaluate.main(["-ckpt", ckpt, "-log_dir", ro]) == 2
    assert capsys.readouterr().err.startswith(f"error: -log_dir {ro} is not writable (cannot create a file in ")


@pytest.mark.parametrize("script", ["2d", "3d"])
def test_training_refuses_an_unwritable_log_dir_before_the_data(acdc, tmp_path, capsys, monkeypatch, script):
    root, _ = acdc
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(run_training, "build_datasets", not_called("reading the data"))
    log_dir = tmp_path / "file" / "logs"
    assert run_training.main(base_args(root, log_dir, 1), script) == 2
    assert error_lines(capsys.readouterr().err) == [f"error: -log_dir {log_dir} is not writable "
                                                    f"({tmp_path / 'file'} is a file, not a folder)"]
    ro = unwritable_existing_folder()
    assert run_training.main(base_args(root, ro, 1), script) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: -log_dir {ro} is not writable (cannot create a file in {ro}: ")


# ------------------------------------------------------------------------------- 10: empty -sam_ckpt
def test_empty_sam_ckpt_says_empty_file(tmp_path, capsys, acdc):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        build_sam2_base(TEST_CFG, str(empty), 64)
    msg = str(e.value)
    assert str(empty) in msg and "empty file (0 bytes)" in msg and "-sam_ckpt" in msg and "\n" not in msg
    # the same words as -resume (one shared reader)
    from sam2_train.engine.checkpoint import validate_checkpoint
    with pytest.raises(CheckpointError) as r:
        validate_checkpoint(empty)
    assert "empty file (0 bytes)" in str(r.value)
    # through training: one line, status 2
    root, _ = acdc
    argv = base_args(root, tmp_path / "logs", 1, "-sam_ckpt", str(empty), "-check_data", "0")
    assert run_training.main(argv, "2d") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: SAM-2 checkpoint (-sam_ckpt) ") and "empty file (0 bytes)" in err
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------- 11: -resume opened first
@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage"])
def test_resume_checkpoint_is_opened_before_the_data(acdc, tmp_path, capsys, monkeypatch, kind):
    root, ckpt = acdc
    bad = tmp_path / "run" / "checkpoints" / "last.pt"
    bad.parent.mkdir(parents=True)
    data = open(ckpt, "rb").read()
    content = {"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 50}
    if kind in content:
        bad.write_bytes(content[kind])
    monkeypatch.setattr(run_training, "build_datasets", not_called("reading the data"))
    monkeypatch.setattr(run_training, "check_before_training", not_called("the data check"))
    assert run_training.main(base_args(root, tmp_path / "logs", 1, "-resume", str(bad)), "2d") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err
    why = {"missing": "checkpoint not found", "empty": "empty file (0 bytes)", "truncated": "corrupt or truncated",
           "garbage": "is not a PyTorch checkpoint (800 bytes, it is a text file)"}[kind]
    assert err.startswith("error: ") and why in err


def test_validate_checkpoint_accepts_a_good_one_without_reading_the_tensors(acdc, tmp_path, monkeypatch):
    """A good checkpoint passes; the tensors are memory-mapped (torch.load(mmap=True)), not read; a foreign
    file (an official SAM-2 one) is refused naming -sam_ckpt."""
    from sam2_train.engine.checkpoint import validate_checkpoint
    _, ckpt = acdc
    seen = []
    real = torch.load

    def load(*a, **k):
        seen.append(k.get("mmap"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", load)
    assert validate_checkpoint(ckpt) is None
    assert seen == [True]
    official = tmp_path / "sam2.pt"
    torch.save({"model": {"w": torch.ones(1)}}, official)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project.*-sam_ckpt"):
        validate_checkpoint(official)
