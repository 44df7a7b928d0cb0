"""The data check (dataset/check.py): every file a run reads is checked before training, bad files anywhere in
a split stop the run with one line naming them, results are cached per file, ``python -m dataset.check``."""
import os
import shutil
import subprocess
import sys
import types

import h5py
import numpy as np
import pytest

from dataset import DatasetError
from dataset.check import check_before_training, check_file, check_splits
from tests._data_fixtures import build, LAS, canonical_volume, make_bhsd_root, save_nifti, write_h5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")


@pytest.fixture(scope="module")
def demo_acdc(tmp_path_factory):
    from dataset.demo import ensure_demo
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "demo_acdc"), "acdc", seed=0)


@pytest.fixture
def acdc(demo_acdc, tmp_path):
    """A private copy of the ACDC demo root that a test may damage."""
    root = str(tmp_path / "acdc")
    shutil.copytree(demo_acdc, root)
    return root


def last_unlabeled_slice(root):
    """The h5 file of the last entry of train_slices.list (an unlabeled slice at the default -labeled_num 2)."""
    name = open(os.path.join(root, "train_slices.list")).read().split()[-1]
    return os.path.join(root, "data", "slices", name + ".h5")


def last_test_volume(root):
    name = open(os.path.join(root, "test.list")).read().split()[-1]
    return os.path.join(root, "data", name + ".h5")


def plant_label_value(path, value=9):
    with h5py.File(path, "r+") as f:
        lab = f["label"][()]
        lab[tuple(i // 2 for i in lab.shape)] = value
        del f["label"]
        f.create_dataset("label", data=lab)


def train(root, log_dir, capsys, *extra):
    """train_2d.py in-process (the check runs before the model is built); returns (status, stdout, stderr)."""
    import run_training
    status = run_training.main(["-dataset", "acdc", "-data_path", root, "-sam_config", TINY, "-image_size", "64",
                                "-b", "2", "-max_iters", "1", "-num_workers", "0", "-device", "cpu",
                                "-log_dir", str(log_dir), *extra], "2d")
    out = capsys.readouterr()
    return status, out.out, out.err


@pytest.mark.parametrize("fault", ["truncated unlabeled slice", "label 9 in a test volume"])
def test_bad_file_anywhere_stops_the_run_before_training(acdc, tmp_path, capsys, fault):
    if fault.startswith("truncated"):
        bad = last_unlabeled_slice(acdc)
        with open(bad, "r+b") as f:
            f.truncate(100)
        what = "cannot read HDF5 file"
    else:
        bad = last_test_volume(acdc)
        plant_label_value(bad, 9)
        what = "label values [9] outside the class range 0..3"
    status, out, err = train(acdc, tmp_path / "logs", capsys)
    assert status == 2
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error")]   # not the tqdm bar
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: ") and what in lines[0], err
    assert "Traceback" not in err
    assert not os.path.exists(tmp_path / "logs")            # no run directory: training never started


def test_a_method_without_unlabeled_data_is_named(acdc, tmp_path, capsys):
    """All 10 training patients labeled: the one line says which -method needs the unlabeled data."""
    status, _, err = train(acdc, tmp_path / "logs", capsys, "-labeled_num", "10", "-method", "fixmatch")
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error")]
    assert status == 2 and len(lines) == 1, err
    assert "(all training volumes are labeled); -method fixmatch needs unlabeled data" in lines[0]


def test_check_data_0_skips_the_check(acdc, monkeypatch):
    plant_label_value(last_test_volume(acdc), 9)
    splits = build("2d", dataset="acdc", data_path=acdc, labeled_num=2)
    with pytest.raises(DatasetError, match="outside the class range"):
        check_before_training(splits, unlabeled=True, num_workers=0)
    # the training scripts call the check unless -check_data 0
    import run_training
    calls = []
    monkeypatch.setattr(run_training, "check_before_training", lambda splits, **kw: calls.append(kw))
    monkeypatch.setattr(run_training, "Trainer", lambda *a, **k: types.SimpleNamespace(fit=lambda: 0))
    flags = ["-dataset", "acdc", "-data_path", acdc, "-labeled_num", "2", "-num_workers", "0", "-image_size", "64"]
    assert run_training.main(flags + ["-check_data", "0"], "2d") == 0 and calls == []
    assert run_training.main(flags + ["-method", "supervised"], "2d") == 0
    assert calls == [{"unlabeled": False, "num_workers": 0, "is_main": True}]


def test_supervised_runs_do_not_check_the_unlabeled_set(acdc):
    with open(last_unlabeled_slice(acdc), "r+b") as f:
        f.truncate(100)
    splits = build("2d", dataset="acdc", data_path=acdc, labeled_num=2, method="supervised")
    report = check_before_training(splits, unlabeled=False, num_workers=0)
    assert report.errors == [] and "unlabeled" not in report.splits


def test_cache_skips_unchanged_files_and_sees_changes(acdc, tmp_path):
    cache = str(tmp_path / "cache.json")
    splits = build("2d", dataset="acdc", data_path=acdc, labeled_num=2)
    first = check_splits(splits, cache_file=cache, progress=False)
    assert first.files > 100 and first.cached == 0 and os.path.isfile(cache)
    second = check_splits(splits, cache_file=cache, progress=False)
    assert second.cached == second.files == first.files
    assert second.splits == first.splits                      # the summary comes back from the cache
    bad = last_test_volume(acdc)
    plant_label_value(bad, 9)                                 # size/mtime change: re-read, error found
    os.utime(bad, ns=(os.stat(bad).st_atime_ns, os.stat(bad).st_mtime_ns + 10**9))
    third = check_splits(splits, cache_file=cache, progress=False, raise_on_error=False)
    assert third.cached == first.files - 1
    assert len(third.errors) == 1 and third.errors[0].startswith(f"{bad}: label values [9]")


def test_parallel_check_finds_the_same(acdc, tmp_path):
    with open(last_unlabeled_slice(acdc), "r+b") as f:
        f.truncate(100)
    plant_label_value(last_test_volume(acdc), 9)
    splits = build("2d", dataset="acdc", data_path=acdc, labeled_num=2)
    serial = check_splits(splits, cache_file="", progress=False, raise_on_error=False)
    parallel = check_splits(splits, num_workers=2, cache_file="", progress=False, raise_on_error=False)
    assert len(serial.errors) == 2 and parallel.errors == serial.errors
    assert parallel.splits == serial.splits
    with pytest.raises(DatasetError) as e:
        serial.raise_if_bad()
    assert "\n" not in str(e.value) and "1 more bad file" in str(e.value)


def test_h5_contents(tmp_path):
    p = str(tmp_path / "s.h5")
    lab = np.zeros((8, 8), np.uint8)
    write_h5(p, image=np.full((8, 8), np.nan, np.float32), label=lab)
    with pytest.raises(DatasetError, match="64 non-finite values"):
        check_file(("h5", p, p, 3, 2))
    write_h5(p, image=np.zeros((0, 8), np.float32), label=np.zeros((0, 8), np.uint8))
    with pytest.raises(DatasetError, match="image is empty"):
        check_file(("h5", p, p, 3, 2))
    write_h5(p, image=np.zeros((8, 8), np.float32))
    with pytest.raises(DatasetError, match="missing key"):
        check_file(("h5", p, p, 3, 2))
    write_h5(p, image=np.zeros((8, 8), np.float32), label=np.full((8, 8), 0.5, np.float32))
    with pytest.raises(DatasetError, match="non-integer"):
        check_file(("h5", p, p, 3, 2))
    write_h5(p, image=np.zeros((2, 8, 8), np.float32), label=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="expected a 2-D image"):
        check_file(("h5", p, p, 3, 2))
    lab = np.zeros((8, 8), np.uint8)
    lab[2, 3] = 2
    write_h5(p, image=np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), label=lab)
    s = check_file(("h5", p, p, 3, 2))
    assert s["hist"] == [63, 0, 1, 0] and (s["min"], s["max"]) == (0.0, 1.0) and s["shape"] == [8, 8]


@pytest.mark.parametrize("fault, message", [
    ("affine", "label affine differs from the image affine"),
    ("shape", "label shape (24, 20, 5) != image shape (24, 20, 6)"),
    ("orientation", "label orientation RAS != image orientation LAS"),
    ("spacing", "label spacing [2.0, 2.0, 2.5] mm != image spacing [2.0, 2.0, 5.0] mm"),
])
def test_nifti_image_and_label_must_agree(tmp_path, fault, message):
    root = str(tmp_path / "bhsd")
    names = make_bhsd_root(root, n=6)
    label = os.path.join(root, "label_192", "ground truths", names[-1] + ".nii.gz")
    hu, lab = canonical_volume(seed=5)
    affine = LAS.copy()
    if fault == "affine":
        affine[:3, 3] += 4.0                                  # same grid, shifted 4 mm
    elif fault == "shape":
        lab = lab[:5]
    elif fault == "orientation":
        affine = np.diag([2.0, 2.0, 5.0, 1.0])
    else:
        affine = np.diag([-2.0, 2.0, 2.5, 1.0])
    save_nifti(label, lab, affine, np.uint16)
    splits = build("3d", dataset="bhsd", data_path=root)      # every label is read
    report = check_splits(splits, cache_file="", progress=False, raise_on_error=False)
    (err,) = report.errors
    assert err.startswith(f"{label}: {message} of {label.replace('ground truths', 'images')}"), err


def test_nifti_summary(tmp_path):
    root = str(tmp_path / "bhsd")
    make_bhsd_root(root, n=6, unlabeled=2)
    report = check_splits(build("3d", dataset="bhsd", data_path=root), cache_file="",
                          progress=False)
    lab = report.splits["labeled"]
    # 6 volumes: 3 test, 1 of the training half held out for validation, 2 labeled; + the 2 unlabeled
    assert (lab["volumes"], lab["slices"]) == (2, 12) and report.splits["unlabeled"]["volumes"] == 2
    assert report.splits["val"]["volumes"] == 1
    assert lab["spacing_min"] == lab["spacing_max"] == [5.0, 2.0, 2.0]
    expected = np.zeros(6, np.int64)
    names = [r.name for r in build("3d", dataset="bhsd", data_path=root).labeled.refs]
    for n in names:
        seed = int(n.split("_ID_")[1], 16)
        expected += np.bincount(canonical_volume(seed=seed)[1].ravel(), minlength=6)
    assert lab["hist"] == expected.tolist()
    assert "labeled: 2 volume(s), 12 slice(s); spacing (z,y,x) 5-5 / 2-2 / 2-2 mm" in report.summary()


def test_cli_exit_codes_and_summary(acdc):
    cmd = [sys.executable, "-m", "dataset.check", "-dataset", "acdc", "-data_path", acdc, "-num_workers", "2"]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "data check:" in r.stdout and ": ok" in r.stdout
    assert "labeled: 6 volume(s)" in r.stdout and "classes (voxels): background" in r.stdout   # 3 patients
    assert "intensity 0..1" in r.stdout
    bad = last_test_volume(acdc)
    plant_label_value(bad, 9)
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: {bad}: label values [9] outside the class range 0..3"]


def test_evaluate_checks_the_split_it_reads(acdc, tmp_path, capsys):
    """evaluate.py checks the evaluated split before building the model: a bad label in the last test volume
    stops it with one line, even with -max_volumes 0 (all volumes)."""
    import cfg
    import evaluate
    import torch
    config = cfg.parse_config(["-dataset", "acdc", "-data_path", acdc, "-sam_config", "sam2_hiera_t",
                               "-num_workers", "0"], script="2d")
    config = config.replace(data={"class_names": ("RV", "Myo", "LV")})
    ckpt = str(tmp_path / "model.pt")
    torch.save({"model": {}, "config": config.to_dict(), "version": 1}, ckpt)
    bad = last_test_volume(acdc)
    plant_label_value(bad, 9)
    assert evaluate.main(["-ckpt", ckpt, "-split", "test", "-log_dir", str(tmp_path / "ev")]) == 2
    err = [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("error")]
    assert err == [f"error: {bad}: label values [9] outside the class range 0..3"]
    assert not (tmp_path / "ev").exists()


# ------------------------------------------------------------------ values as training reads them; suspicious data
def save_with_srow(path, arr_dhw, srow):
    """A NIfTI whose sform rows are written as given (nibabel refuses to build a NaN or singular affine)."""
    import nibabel as nib
    img = nib.Nifti1Image(arr_dhw.astype(np.float32).transpose(2, 1, 0), np.eye(4))
    hdr = img.header
    hdr.set_qform(None, code=0)
    hdr["sform_code"] = 1
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = srow[0], srow[1], srow[2]
    nib.save(nib.Nifti1Image(img.dataobj, None, header=hdr), path)


def test_scaled_values_that_overflow_float32_are_caught(tmp_path):
    """scl_slope 1e38 on int16 data: finite in the file's float64 view, Inf once read as training reads it."""
    import nibabel as nib
    hu, _ = canonical_volume(seed=1)
    img = nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), np.diag([2.0, 2.0, 5.0, 1.0]))
    img.header.set_slope_inter(1e38, 0)
    path = str(tmp_path / "big.nii.gz")
    nib.save(img, path)
    with pytest.raises(DatasetError, match=r"big.nii.gz: image has \d+ non-finite values"):
        check_file(("nifti", path, None, 5, 3))


@pytest.mark.parametrize("srow, message", [
    (np.diag([np.nan, 2.0, 5.0, 1.0])[:3], "affine holds NaN/inf values (expected a finite voxel-to-world matrix)"),
    (np.diag([0.0, 2.0, 5.0, 1.0])[:3], "singular affine (zero spacing: voxel sizes [0.0, 2.0, 5.0] mm)"),
])
def test_affine_problems_are_named(tmp_path, srow, message):
    from dataset.io import read_nifti
    path = str(tmp_path / "bad.nii.gz")
    save_with_srow(path, canonical_volume()[0], srow)
    for read in (lambda: check_file(("nifti", path, None, 5, 3)), lambda: read_nifti(path)):
        with pytest.raises(DatasetError) as e:
            read()
        assert str(e.value) == f"{path}: {message}"


def test_all_zero_images_and_absurd_spacing_are_warned_with_their_files(tmp_path, capsys):
    root = str(tmp_path / "bhsd")
    names = make_bhsd_root(root, n=6)
    image = os.path.join(root, "label_192", "images", names[-1] + ".nii.gz")
    hu, _ = canonical_volume(seed=int(names[-1].split("_ID_")[1], 16))
    save_nifti(image, np.zeros_like(hu), LAS, np.int16)
    wide = os.path.join(root, "label_192", "images", names[0] + ".nii.gz")
    label = os.path.join(root, "label_192", "ground truths", names[0] + ".nii.gz")
    hu0, lab0 = canonical_volume(seed=int(names[0].split("_ID_")[1], 16))
    far = np.diag([-2.0, 2.0, 500.0, 1.0])
    save_nifti(wide, hu0, far, np.int16)
    save_nifti(label, lab0, far, np.uint16)
    report = check_before_training(build("3d", dataset="bhsd", data_path=root), unlabeled=False, num_workers=0)
    assert not report.errors
    err = capsys.readouterr().err.splitlines()
    assert f"warning: 1 image file(s) hold only zeros: {image}" in err
    assert f"warning: 1 volume(s) have a voxel size over 100 mm (a header in the wrong unit?): {wide} " \
           "(500 x 2 x 2 mm)" in err


def test_a_labeled_set_without_foreground_is_refused(acdc, tmp_path, capsys):
    names = open(os.path.join(acdc, "train_slices.list")).read().split()
    from dataset.acdc import patient_of
    first = [n for n in names if patient_of(n) in {patient_of(m) for m in names[:1]}]
    for n in first:
        with h5py.File(os.path.join(acdc, "data", "slices", n + ".h5"), "r+") as f:
            f["label"][...] = 0
    status, out, err = train(acdc, tmp_path / "logs", capsys, "-labeled_num", "1")
    assert status == 2
    (line,) = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("error")]
    assert f"every label of the {len(first)} labeled file(s) is background" in line, line
    assert "Traceback" not in err


def test_duplicated_slice_list_lines_are_warned_and_counted_once(acdc, capsys):
    path = os.path.join(acdc, "train_slices.list")
    names = open(path).read().split()
    with open(path, "w") as f:
        f.write("\n".join([*names[:3], names[1], *names[3:]]) + "\n")
    splits = build("2d", dataset="acdc", data_path=acdc)
    err = capsys.readouterr().err
    assert f"warning: {path}: 1 duplicated line(s) ({names[1]}); each entry is used once" in err
    labeled = [(ref.name, z) for ref, z in splits.labeled.items]
    assert len(labeled) == len(set(labeled))                   # the duplicated slice is not drawn twice as often
