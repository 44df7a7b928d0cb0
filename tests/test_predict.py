"""predict.py on scans without labels: the same label maps as ``evaluate.py -save_pred`` (2D h5, 3D NIfTI),
NIfTI outputs on the input's grid (flipped, oblique header), PNG input, volumes.csv on a phantom, corrupt
files among good ones, no overwrite, weights selection. Tiny random SAM-2 checkpoints at 64 px; where a
non-empty prediction matters, the coarse head is replaced by an intensity threshold (as in test_train_3d)."""
import csv
import dataclasses
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import evaluate
import predict
from sam2_train.evaluation.checkpoint_model import load_model
from tests._model_fixtures import TEST_CFG, make_informative
from tests.test_train_3d import blob_volume, intensity_coarse_head

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
ACDC_CLASSES = ["RV", "Myo", "LV"]
BHSD_CLASSES = ["EDH", "IPH", "IVH", "SAH", "SDH"]


def make_ckpt(path, script, root, classes, ema_shift=None):
    """A tiny random checkpoint of ``script`` on the demo data at ``root``; with ``ema_shift`` it also holds an
    EMA teacher whose coarse-head weights differ from the student's by that amount."""
    import cfg
    from dataset import build_datasets
    from sam2_train.engine.checkpoint import make_checkpoint, save_checkpoint
    from sam2_train.engine.ema import ModelEMA
    from sam2_train.model.sss_net import build_sss_net
    config = cfg.parse_config(["-dataset", "demo", "-data_path", root, "-sam_config", TEST_CFG, "-image_size", "64",
                               "-video_length", "4", "-num_workers", "0"], script=script)
    splits = build_datasets(config.data, script, image_size=config.model.image_size, seed=config.run.seed)
    config = cfg.with_data(config, splits)                     # the classes and intensity rule, as training records
    assert list(config.data.class_names) == list(classes)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net = build_sss_net(config.model)
    make_informative(net.sam.sam)
    ema = None
    if ema_shift is not None:
        ema = ModelEMA(net, 0.99)
        with torch.no_grad():
            for p in net.head.parameters():
                p.add_(ema_shift)
    save_checkpoint(path, make_checkpoint(net, config.to_dict(), ema=ema))
    return str(path)


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    from dataset.demo import ensure_demo
    tmp = tmp_path_factory.mktemp("acdc")
    root = ensure_demo(str(tmp / "demo_acdc"), "acdc", seed=0)
    return root, make_ckpt(tmp / "ck2d.pt", "2d", root, ACDC_CLASSES)


@pytest.fixture(scope="module")
def bhsd(tmp_path_factory):
    from dataset.demo import ensure_demo
    tmp = tmp_path_factory.mktemp("bhsd")
    root = ensure_demo(str(tmp / "demo_bhsd"), "bhsd", seed=0)
    return root, make_ckpt(tmp / "ck3d.pt", "3d", root, BHSD_CLASSES)


@pytest.fixture
def threshold_head(monkeypatch):
    """Models built from a checkpoint (checkpoint_model, so by evaluate.py and predict.py alike) get the intensity
    coarse head."""
    from sam2_train.evaluation import checkpoint_model
    real = checkpoint_model.network

    def network(name):
        kind = real(name)
        return dataclasses.replace(kind, build=lambda *a, **k: intensity_coarse_head(kind.build(*a, **k), cls=2))

    monkeypatch.setattr(checkpoint_model, "network", network)


def run_predict(*argv):
    return predict.main([str(a) for a in argv])


def read_h5_pred(path):
    import h5py
    with h5py.File(path, "r") as f:
        return f["prediction"][()]


# ------------------------------------------------------------------------------- same as evaluate.py
def test_h5_predictions_equal_evaluate_save_pred(acdc, threshold_head, tmp_path):
    root, ckpt = acdc
    assert evaluate.main(["-ckpt", ckpt, "-split", "test", "-save_pred", "-max_volumes", "2",
                          "-log_dir", str(tmp_path / "eval")]) == 0
    (ev,) = os.listdir(tmp_path / "eval")
    saved = sorted(os.listdir(tmp_path / "eval" / ev / "predictions"))
    assert len(saved) == 2
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in saved:                                        # the image volumes (they hold labels too: unread)
        shutil.copy(os.path.join(root, "data", name), scans / name)
    assert run_predict("-ckpt", ckpt, "-input", scans, "-out", tmp_path / "out") == 0
    assert sorted(f for f in os.listdir(tmp_path / "out") if f.endswith(".h5")) == saved
    fg = 0
    for name in saved:
        ours = read_h5_pred(tmp_path / "out" / name)
        np.testing.assert_array_equal(ours, read_h5_pred(tmp_path / "eval" / ev / "predictions" / name))
        fg += int((ours > 0).sum())
    assert fg > 0, "the comparison is only meaningful with foreground"


def test_nifti_predictions_equal_evaluate_save_pred(bhsd, threshold_head, tmp_path):
    import nibabel as nib
    root, ckpt = bhsd
    assert evaluate.main(["-ckpt", ckpt, "-split", "test", "-save_pred", "-max_volumes", "1",
                          "-log_dir", str(tmp_path / "eval")]) == 0
    (ev,) = os.listdir(tmp_path / "eval")
    (name,) = os.listdir(tmp_path / "eval" / ev / "predictions")
    (src,) = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f == name and "images" in d]
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(src, scans / name)
    assert run_predict("-ckpt", ckpt, "-input", scans, "-out", tmp_path / "out") == 0
    ours, theirs = nib.load(str(tmp_path / "out" / name)), nib.load(str(tmp_path / "eval" / ev / "predictions" / name))
    np.testing.assert_array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))
    assert np.asanyarray(ours.dataobj).any()
    image = nib.load(src)
    assert ours.shape == image.shape and np.allclose(ours.affine, image.affine)
    assert ours.header["pixdim"][0] == image.header["pixdim"][0] == -1          # BHSD-like qfac -1 kept


# ------------------------------------------------------------------------------- NIfTI geometry
def _oblique(spacing=(0.5, 0.5, 5.0), degrees=15.0):
    t = np.deg2rad(degrees)
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = (-20.0, -30.0, -40.0)
    return aff


def test_nifti_output_keeps_flipped_oblique_grid_and_volumes(bhsd, threshold_head, tmp_path):
    """The same scan stored in RAS voxel order and with x and z reversed (same world positions, oblique
    affine, different qform/sform codes): each prediction lies on its own file's grid and header, the two
    agree voxel for voxel in world space, and volumes.csv counts the same with slice numbers of each file."""
    import nibabel as nib
    _, ckpt = bhsd
    vol = blob_volume(8, 32, 40, 2, 6) * 80.0                                  # (z,y,x) in HU, window 0..80
    xyz = np.ascontiguousarray(vol.transpose(2, 1, 0)).astype(np.float32)
    ras = _oblique()
    flip = np.array([[-1, 0, 0, xyz.shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, xyz.shape[2] - 1], [0, 0, 0, 1.0]])
    scans = tmp_path / "scans"
    scans.mkdir()
    for name, data, aff, codes in (("a", xyz, ras, (1, 1)), ("b", xyz[::-1, :, ::-1], ras @ flip, (2, 1))):
        img = nib.Nifti1Image(np.ascontiguousarray(data), aff)
        img.set_qform(aff, code=codes[0])
        img.set_sform(aff, code=codes[1])
        nib.save(img, str(scans / f"{name}.nii.gz"))
    assert run_predict("-ckpt", ckpt, "-input", scans, "-out", tmp_path / "out") == 0
    preds = {}
    for name in ("a", "b"):
        src, out = nib.load(str(scans / f"{name}.nii.gz")), nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        assert out.shape == src.shape
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
        for form in ("qform", "sform"):
            m, code = getattr(out, f"get_{form}")(coded=True)
            m_src, code_src = getattr(src, f"get_{form}")(coded=True)
            assert int(code) == int(code_src)
            np.testing.assert_allclose(m, m_src, atol=1e-5)
        assert out.get_data_dtype() == np.uint16
        preds[name] = np.asanyarray(out.dataobj)
    assert (preds["a"] == 2).any()
    np.testing.assert_array_equal(preds["b"], preds["a"][::-1, :, ::-1])
    rows = {(r["case"], r["class"]): r for r in csv.DictReader(open(tmp_path / "out" / "volumes.csv"))}
    a, b = rows[("a", "IPH")], rows[("b", "IPH")]
    assert a["voxels"] == b["voxels"] == str(int((preds["a"] == 2).sum()))
    # written with 4 decimals: equal to the exact volume up to that rounding
    assert float(a["volume_ml"]) == pytest.approx(int(a["voxels"]) * 0.5 * 0.5 * 5.0 / 1000, abs=0.5e-4 + 1e-9)
    zs = np.nonzero((preds["a"] == 2).any((0, 1)))[0]                             # file slice axis k
    assert (int(a["first_slice"]), int(a["last_slice"])) == (zs.min(), zs.max())
    assert (int(b["first_slice"]), int(b["last_slice"])) == (7 - zs.max(), 7 - zs.min())


# ------------------------------------------------------------------------------- PNG slices
def test_png_case_gives_png_masks_equal_to_h5(acdc, threshold_head, tmp_path):
    """A folder of 8-bit PNG slices and the h5 volume holding the same grey values /255 give the same masks."""
    import h5py
    from PIL import Image
    root, ckpt = acdc
    with h5py.File(os.path.join(root, "data", "patient003_frame01.h5"), "r") as f:
        image = f["image"][()]
    q = np.round((image - image.min()) / (image.max() - image.min()) * 255).astype(np.uint8)
    case = tmp_path / "scans" / "case7"
    case.mkdir(parents=True)
    names = [f"slice_{z}.png" for z in range(len(q))]
    for z, name in enumerate(names):
        Image.fromarray(q[z]).save(case / name)
    with h5py.File(tmp_path / "scans" / "case7_h5.h5", "w") as f:
        f.create_dataset("image", data=q.astype(np.float32) / np.float32(255))
    assert run_predict("-ckpt", ckpt, "-input", tmp_path / "scans", "-out", tmp_path / "out", "-overlay", "1") == 0
    masks = np.stack([np.asarray(Image.open(tmp_path / "out" / "case7" / n)) for n in names])
    assert masks.dtype == np.uint8 and masks.shape == q.shape
    np.testing.assert_array_equal(masks, read_h5_pred(tmp_path / "out" / "case7_h5.h5"))
    assert masks.any()
    for name in ("case7", "case7_h5"):
        with Image.open(tmp_path / "out" / "overlays" / f"{name}.png") as im:
            assert im.mode == "RGB" and im.size[0] > 0


# ------------------------------------------------------------------------------- volumes on a phantom
def test_class_volumes_match_hand_computed_phantom():
    lab = np.zeros((6, 8, 8), np.uint8)
    lab[1:3, 0:2, 0:2] = 1            # 8 voxels on slices 1-2
    lab[5, 4:7, 5] = 1                # 3 voxels on slice 5, a second component
    lab[0, 0, 7] = 2                  # two voxels touching only at a corner: one 26-connected component
    lab[1, 1, 6] = 2
    spacing = (2.0, 0.5, 0.25)        # 0.25 mm^3 per voxel
    rows = predict.class_volumes(lab, ["A", "B", "C"], spacing)
    assert [r["class"] for r in rows] == ["A", "B", "C"]
    a, b, c = rows
    assert (a["voxels"], a["components"], a["slices"], a["first_slice"], a["last_slice"]) == (11, 2, 3, 1, 5)
    assert a["volume_ml"] == pytest.approx(11 * 0.25 / 1000)
    assert (b["voxels"], b["components"], b["slices"], b["first_slice"], b["last_slice"]) == (2, 1, 2, 0, 1)
    assert b["volume_ml"] == pytest.approx(2 * 0.25 / 1000)
    assert (c["voxels"], c["components"], c["slices"], c["first_slice"], c["last_slice"]) == (0, 0, 0, None, None)
    assert c["volume_ml"] == 0.0
    # no spacing: no volume; slice numbers of the file (reversed axis)
    rows = predict.class_volumes(lab, ["A", "B", "C"], None, slice_numbers=np.arange(6)[::-1])
    assert rows[0]["volume_ml"] is None and (rows[0]["first_slice"], rows[0]["last_slice"]) == (0, 4)


def test_intensity_for_input_follows_the_checkpoint(tmp_path):
    # a checkpoint records its dataset's intensity rule (config.data.intensity); predict.py maps inputs by it
    from dataset.registry import dataset_spec
    from sam2_train.engine.config import DataConf
    bhsd = dataset_spec("bhsd").intensity(DataConf(dataset="bhsd", hu_window=(0.0, 80.0)), str(tmp_path), "3d")
    assert predict.intensity_for_input(bhsd, "nifti") == ("window", 0.0, 80.0)
    assert predict.intensity_for_input(bhsd, "h5") == ("unit",)
    assert predict.intensity_for_input(bhsd, "png") == ("png_unit",)
    acdc = dataset_spec("acdc").intensity(DataConf(dataset="acdc"), str(tmp_path), "2d")
    assert predict.intensity_for_input(acdc, "nifti") == ("minmax",)
    assert predict.intensity_for_input(["window", -100.0, 200.0], "nifti") == ("window", -100.0, 200.0)


# ------------------------------------------------------------------------------- batch behaviour (CLI)
def test_bad_cases_are_reported_and_the_rest_written(acdc, tmp_path, capsys):
    import h5py
    import nibabel as nib
    root, ckpt = acdc
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(os.path.join(root, "data", "patient003_frame01.h5"), scans / "good.h5")
    (scans / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(300))
    with h5py.File(scans / "flat.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((32, 32), np.float32))
    nan = np.ones((16, 16, 4), np.float32)
    nan[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), str(scans / "nan.nii.gz"))
    cmd = [sys.executable, os.path.join(ROOT, "predict.py"), "-ckpt", ckpt, "-input", str(scans),
           "-out", str(tmp_path / "out")]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.startswith("error:")]
    for bad, why in (("corrupt.h5", "cannot read HDF5"), ("flat.h5", "expected a 3-D"), ("nan.nii.gz", "non-finite")):
        (line,) = [ln for ln in errors if str(scans / bad) in ln]
        assert why in line
    assert len(errors) == 3
    assert "wrote 1 of 4 case(s)" in r.stdout + r.stderr and "3 failed" in r.stdout + r.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["good.h5", "volumes.csv"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "volumes.csv")))
    assert [(x["case"], x["class"]) for x in rows] == [("good", c) for c in ACDC_CLASSES]
    assert sum(int(x["voxels"]) for x in rows) == int((read_h5_pred(tmp_path / "out" / "good.h5") > 0).sum())
    assert all(x["volume_ml"] == "" for x in rows)                                   # h5: no spacing known

    before = os.path.getmtime(tmp_path / "out" / "good.h5")
    assert run_predict(*cmd[2:]) == 2                                     # same command: refused, nothing replaced
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "-overwrite 1" in err
    assert os.path.getmtime(tmp_path / "out" / "good.h5") == before


def test_weights_choice_and_missing_ema(acdc, tmp_path):
    root, _ = acdc
    both = make_ckpt(tmp_path / "both.pt", "2d", root, ACDC_CLASSES, ema_shift=0.5)
    state = torch.load(both, weights_only=True)
    key = next(k for k in state["model"] if k.startswith("head."))
    for weights, source in (("auto", state["ema"]["module"]), ("ema", state["ema"]["module"]),
                            ("model", state["model"])):
        m = load_model(both, weights=weights, device="cpu")
        assert m.weights == ("student" if weights == "model" else "ema")
        torch.testing.assert_close(m.net.state_dict()[key], source[key])
    plain = make_ckpt(tmp_path / "plain.pt", "2d", root, ACDC_CLASSES)
    with pytest.raises(Exception, match="no EMA of the weights"):
        load_model(plain, weights="ema", device="cpu")
