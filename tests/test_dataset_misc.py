"""Bad input -> one DatasetError naming the file; deterministic items; demo data; ACDC conversion."""
import glob
import json
import os

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataset import DatasetError
from dataset.demo import BHSD_DEMO, ensure_demo, make_acdc, make_bhsd
from tests._data_fixtures import build, LAS, canonical_volume, make_acdc_root, make_bhsd_root, save_nifti, write_h5


# ------------------------------------------------------------------------------ errors

def _first_error(fn):
    with pytest.raises(DatasetError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_acdc_bad_inputs(tmp_path):
    root = make_acdc_root(str(tmp_path / "A"), patients=(5, 3), slices=2)
    b = lambda **kw: build("2d", data_path=root, labeled_num=1, **kw)  # noqa: E731
    assert "nope" in _first_error(lambda: build("2d", data_path=str(tmp_path / "nope")))
    os.rename(os.path.join(root, "val.list"), os.path.join(root, "val.bak"))
    assert "val.list: list file not found" in _first_error(b)
    os.rename(os.path.join(root, "val.bak"), os.path.join(root, "val.list"))
    sl = os.path.join(root, "data", "slices")
    # a list naming a missing file (checked at construction)
    os.rename(os.path.join(sl, "patient003_frame02_slice_2.h5"), os.path.join(sl, "x.bak"))
    assert "patient003_frame02_slice_2.h5 does not exist" in _first_error(b)
    os.rename(os.path.join(sl, "x.bak"), os.path.join(sl, "patient003_frame02_slice_2.h5"))
    s = b()
    # corrupt h5 (checked when read)
    p = os.path.join(sl, "patient005_frame01_slice_1.h5")
    with open(p, "wb") as f:
        f.write(b"not an hdf5 file at all")
    msg = _first_error(lambda: [s.labeled[i] for i in range(len(s.labeled))])
    assert p in msg and "cannot read HDF5" in msg
    # missing key
    write_h5(p, image=np.zeros((8, 8), np.float32))
    msg = _first_error(lambda: [s.labeled[i] for i in range(len(s.labeled))])
    assert p in msg and "missing key(s) label" in msg
    # shape mismatch
    write_h5(p, image=np.zeros((8, 8), np.float32), label=np.zeros((8, 9), np.uint8))
    msg = _first_error(lambda: [s.labeled[i] for i in range(len(s.labeled))])
    assert p in msg and "!= label shape" in msg
    # label out of range
    write_h5(p, image=np.zeros((8, 8), np.float32), label=np.full((8, 8), 7, np.uint8))
    msg = _first_error(lambda: [s.labeled[i] for i in range(len(s.labeled))])
    assert p in msg and "outside the class range 0..3" in msg
    # NaN in an image (a slice, then a volume) and an empty volume
    img = np.zeros((8, 8), np.float32)
    img[2, 3] = np.nan
    write_h5(p, image=img, label=np.zeros((8, 8), np.uint8))
    msg = _first_error(lambda: [s.labeled[i] for i in range(len(s.labeled))])
    assert p in msg and "1 non-finite values" in msg
    vp = os.path.join(root, "data", "patient002_frame01.h5")
    write_h5(vp, image=np.full((2, 8, 8), np.inf, np.float32), label=np.zeros((2, 8, 8), np.uint8))
    msg = _first_error(lambda: s.val[0])
    assert vp in msg and "128 non-finite values" in msg
    write_h5(vp, image=np.zeros((0, 8, 8), np.float32), label=np.zeros((0, 8, 8), np.uint8))
    msg = _first_error(lambda: s.val[0])
    assert vp in msg and "image is empty" in msg
    write_h5(p, image=np.zeros((8, 8), np.float32), label=np.zeros((8, 8), np.uint8))
    # volume with bad label in val
    write_h5(vp, image=np.zeros((2, 8, 8), np.float32), label=np.full((2, 8, 8), 4, np.uint8))
    msg = _first_error(lambda: s.val[0])
    assert vp in msg and "[4]" in msg
    # empty list file
    open(os.path.join(root, "train_slices.list"), "w").close()
    assert "train_slices.list is empty" in _first_error(b)


def test_bhsd_bad_inputs(tmp_path):
    make_bhsd_root(str(tmp_path), n=4, unlabeled=1)
    b = lambda **kw: build("3d", dataset="bhsd", data_path=str(tmp_path), **kw)  # noqa: E731
    # 2 training volumes, 1 held out for val
    assert "larger than the 1 volumes" in _first_error(lambda: b(labeled_num=3))
    s = b(labeled_num=1)
    gt = os.path.join(str(tmp_path), "label_192", "ground truths")
    img_dir = os.path.join(str(tmp_path), "label_192", "images")
    # corrupt NIfTI
    bad = os.path.join(img_dir, s.test.refs[0].name + ".nii.gz")
    with open(bad, "wb") as f:
        f.write(b"\x1f\x8b garbage")
    msg = _first_error(lambda: s.test[0])
    assert bad in msg and "cannot read NIfTI" in msg
    # image/label shape mismatch
    hu, lab = canonical_volume()
    save_nifti(bad, hu[:, :, :10], LAS, np.int16)
    msg = _first_error(lambda: s.test[0])
    assert "label shape (6, 20, 24)" in msg and "!= image shape (6, 20, 10)" in msg
    # NaN intensities in a float NIfTI
    nan_hu = hu.astype(np.float32)
    nan_hu[0, 0, :2] = np.nan
    save_nifti(bad, nan_hu, LAS, np.float32)
    msg = _first_error(lambda: s.test[0])
    assert bad in msg and "2 non-finite values" in msg
    # label value outside 0..5
    save_nifti(bad, hu, LAS, np.int16)
    lp = os.path.join(gt, os.path.basename(bad))
    save_nifti(lp, np.full_like(lab, 9), LAS, np.uint16)
    msg = _first_error(lambda: s.test[0])
    assert lp in msg and "outside the class range 0..5" in msg
    # image without label (construction)
    os.remove(lp)
    msg = _first_error(lambda: b(labeled_num=1))
    assert bad in msg and "no label file" in msg
    # empty unlabeled folder
    save_nifti(lp, lab, LAS, np.uint16)
    for f in glob.glob(os.path.join(str(tmp_path), "unlabel_1980", "**", "*.nii.gz"), recursive=True):
        os.remove(f)
    assert "unlabel_1980: unlabeled folder holds no NIfTI" in _first_error(lambda: b(labeled_num=1))
    # missing ground-truth folder
    os.rename(gt, gt + "_x")
    assert "ground truths: label folder not found" in _first_error(lambda: b(labeled_num=1))


def test_error_from_dataloader_worker_is_one_line(tmp_path):
    root = make_acdc_root(str(tmp_path / "W"), patients=(5, 3), slices=2)
    s = build("2d", data_path=root, labeled_num=1)
    p = os.path.join(root, "data", "slices", "patient005_frame01_slice_2.h5")
    write_h5(p, image=np.zeros((8, 8), np.float32))
    with pytest.raises(DatasetError) as e:
        list(DataLoader(s.labeled, batch_size=4, num_workers=1))
    assert str(e.value) == f"{p}: missing key(s) label (expected datasets image, label; found image)"


# ------------------------------------------------------------------------------ determinism

def test_items_deterministic_in_seed_epoch_index(tmp_path):
    root = make_acdc_root(str(tmp_path / "D"), patients=(5, 3), slices=5)
    s = build("2d", data_path=root, labeled_num=1, seed=3)
    t = build("2d", data_path=root, labeled_num=1, seed=3)
    torch.manual_seed(123)
    np.random.seed(5)
    a = s.unlabeled[2]
    torch.manual_seed(999)                # global RNG state must not matter
    np.random.seed(7)
    b = t.unlabeled[2]
    for k in ("image_w", "image_s1", "image_s2"):
        assert torch.equal(a[k], b[k])
    assert not torch.equal(a["image_s1"], a["image_s2"])
    diffs = 0
    for i in range(len(s.labeled)):
        x0 = s.labeled[i]["image"]
        s.labeled.set_epoch(1)
        x1 = s.labeled[i]["image"]
        s.labeled.set_epoch(0)
        assert torch.equal(x0, s.labeled[i]["image"])
        diffs += not torch.equal(x0, x1)
    assert diffs >= len(s.labeled) // 2           # a new epoch draws new augmentations
    u = build("2d", data_path=root, labeled_num=1, seed=4)
    assert not torch.equal(u.unlabeled[2]["image_s1"], a["image_s1"])


# ------------------------------------------------------------------------------ demo data

def test_demo_deterministic_and_loadable(tmp_path):
    a, b, c = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")
    make_acdc(a, seed=1, patients=5)
    make_acdc(b, seed=1, patients=5)
    make_acdc(c, seed=2, patients=5)
    fa = sorted(os.listdir(os.path.join(a, "data", "slices")))
    assert fa == sorted(os.listdir(os.path.join(b, "data", "slices")))
    assert open(os.path.join(a, "train_slices.list")).read() == open(os.path.join(b, "train_slices.list")).read()
    for v in sorted(os.listdir(os.path.join(a, "data")))[:4]:
        if v.endswith(".h5"):
            with h5py.File(os.path.join(a, "data", v)) as f, h5py.File(os.path.join(b, "data", v)) as g:
                assert np.array_equal(f["image"][()], g["image"][()]) and np.array_equal(f["label"][()], g["label"][()])
                assert f["image"].dtype == np.float32 and f["label"].dtype == np.uint8
                assert f["image"][()].min() == 0.0 and f["image"][()].max() == 1.0
                assert set(np.unique(f["label"][()])) == {0, 1, 2, 3}
                assert f["image"].compression == "gzip"
    assert open(os.path.join(a, "train_slices.list")).read() != open(os.path.join(c, "train_slices.list")).read() or \
        not np.array_equal(h5py.File(os.path.join(a, "data", "patient001_frame01.h5"))["image"][()],
                           h5py.File(os.path.join(c, "data", "patient001_frame01.h5"))["image"][()])
    x, y = str(tmp_path / "x"), str(tmp_path / "y")
    make_bhsd(x, seed=1, labeled=3, unlabeled=1)
    make_bhsd(y, seed=1, labeled=3, unlabeled=1)
    fx = sorted(glob.glob(os.path.join(x, "label_192", "ground truths", "*.nii.gz")))
    assert [os.path.basename(f) for f in fx] == \
        [os.path.basename(f) for f in sorted(glob.glob(os.path.join(y, "label_192", "ground truths", "*.nii.gz")))]
    for f in fx:
        lx, ly = nib.load(f), nib.load(f.replace(x, y))
        assert np.array_equal(np.asanyarray(lx.dataobj), np.asanyarray(ly.dataobj))
        assert lx.get_data_dtype() == np.uint16 and lx.shape[:2] == (128, 128)
        assert nib.load(f.replace("ground truths", "images")).get_data_dtype() == np.int16
    assert len(glob.glob(os.path.join(x, "unlabel_1980", "*", "*.nii.gz"))) == 1


def test_bhsd_phantom_lesion_scale():
    from dataset.demo import _KINDS, _bhsd_volume
    for c, kind in enumerate(_KINDS, start=1):  # one bleed per volume: present at both scales, wider at 3x
        n = [int((_bhsd_volume(np.random.default_rng(3), 20, 96, 96, (5.0, 2.0, 2.0), [kind], lesion_scale=g)[1]
                  == c).sum()) for g in (1.0, 3.0)]
        assert 0 < n[0] < n[1], (kind, n)


def test_bhsd_demo_bleeds_along_the_skull_are_told_apart_by_density():
    """EDH and SDH both lie against the skull: their drawn densities are >= 12 HU (3 noise sigmas) apart, so in
    every phantom the mean EDH density is >= 10 HU above the mean SDH density of every other one (2 HU for noise
    and rounding), and both stay between the brain (30-38 HU) and the 80 HU top of the window."""
    from dataset.demo import _bhsd_volume
    edh, sdh = [], []
    for seed in range(6):
        hu, lab = _bhsd_volume(np.random.default_rng(seed), 24, 96, 96, (5.0, 2.0, 2.0), ["EDH", "SDH"], 3.0)
        assert (lab == 1).any() and (lab == 5).any(), seed
        edh.append(float(hu[lab == 1].mean()))
        sdh.append(float(hu[lab == 5].mean()))
    assert min(edh) - max(sdh) >= 12.0 - 2.0, (edh, sdh)          # 2 HU: mean of noisy, rounded voxels
    assert max(edh) < 80.0 and min(sdh) > 38.0 + 5.0, (edh, sdh)


def test_ensure_demo_refuses_bhsd_phantoms_of_another_lesion_scale(tmp_path):
    root = str(tmp_path / "demo_bhsd")
    ensure_demo(root, "bhsd", labeled=3, unlabeled=1, lesion_scale=1.0)      # e.g. made by an older version
    assert ensure_demo(root, "bhsd", lesion_scale=1.0) == root
    msg = _first_error(lambda: ensure_demo(root, "bhsd"))
    assert root in msg and "lesion_scale 1;" in msg and "with lesion_scale 3" in msg and "remove the folder" in msg
    info = json.load(open(os.path.join(root, "DEMO.json")))
    info["version"] = 1                                                        # the generator before splits/*.txt
    json.dump(info, open(os.path.join(root, "DEMO.json"), "w"))
    msg = _first_error(lambda: ensure_demo(root, "bhsd", lesion_scale=1.0))
    assert "generator version 1" in msg and f"makes version {BHSD_DEMO['version']}" in msg


def test_bhsd_demo_split_has_every_class_on_every_side(tmp_path):
    """The 12 labeled demo volumes come with splits/{train,val,test}.txt (7/1/4), and every bleed type is in
    >= 3 training volumes, the validation volume and >= 2 test volumes; the dataset uses that split."""
    root = ensure_demo(str(tmp_path / "demo_bhsd"), "bhsd")
    split = {p: [ln.strip() for ln in open(os.path.join(root, "splits", f"{p}.txt")) if not ln.startswith("#")]
             for p in ("train", "val", "test")}
    assert [len(split[p]) for p in ("train", "val", "test")] == [7, 1, 4]
    gt = os.path.join(root, "label_192", "ground truths")
    for part, least in (("train", 3), ("val", 1), ("test", 2)):
        has = np.zeros(6, int)
        for name in split[part]:
            has += np.bincount(np.unique(np.asanyarray(nib.load(os.path.join(gt, name)).dataobj)), minlength=6)[:6] > 0
        assert (has[1:] >= least).all(), (part, has)
    s = build("3d", dataset="demo", data_path=root, image_size=64)
    assert s.info["split"] == "user" and len(s.val) == 1 and len(s.test) == 4


def test_ensure_demo_and_demo_dataset(tmp_path, monkeypatch):
    root = str(tmp_path / "demo_acdc")
    ensure_demo(root, "acdc")
    assert os.path.isfile(os.path.join(root, "DEMO.json"))
    assert not [d for d in os.listdir(tmp_path) if ".tmp-" in d]           # no temp folder left
    mtime = os.path.getmtime(os.path.join(root, "DEMO.json"))
    ensure_demo(root, "acdc")                                               # already there: untouched
    assert os.path.getmtime(os.path.join(root, "DEMO.json")) == mtime
    s = build("2d", dataset="demo", data_path=root, labeled_num=2, image_size=64)
    assert s.class_names == ("RV", "Myo", "LV") and s.test is not None and len(s.test) == 8 and len(s.val) == 4
    # an interrupted generation leaves nothing at the target
    import dataset.demo as demo

    def boom(out, **kw):
        os.makedirs(os.path.join(out, "data"))
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "make_bhsd", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo(str(tmp_path / "demo_bhsd"), "bhsd")
    assert os.listdir(tmp_path) == ["demo_acdc"]


# ------------------------------------------------------------------------------ ACDC conversion

def test_convert_acdc_raw(tmp_path):
    from dataset.convert_acdc import main

    raw = tmp_path / "raw" / "training"
    rng = np.random.default_rng(0)
    for pid, ed, es in ((2, 1, 12), (99, 1, 9), (38, 1, 7), (1, 1, 10), (44, 2, 11)):
        d = raw / f"patient{pid:03d}"
        os.makedirs(d)
        (d / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: DCM\nNbFrame: 30\n")
        for fr in (ed, es):
            img = rng.normal(100, 30, (12, 10, 3 + pid % 3)).astype(np.float32)    # (x, y, z)
            lab = np.zeros(img.shape, np.uint8)
            lab[2:5, 3:6, :] = 1 + fr % 3
            stem, affine = str(d / f"patient{pid:03d}_frame{fr:02d}"), np.diag([1.5, 1.5, 10, 1])
            nib.save(nib.Nifti1Image(img, affine), stem + ".nii.gz")
            nib.save(nib.Nifti1Image(lab, affine), stem + "_gt.nii.gz")
    out = str(tmp_path / "out")
    assert main([str(tmp_path / "raw"), out]) == 0
    rd = lambda n: open(os.path.join(out, n)).read().split()  # noqa: E731
    assert rd("val.list") == ["patient002_frame01", "patient002_frame02"]
    assert rd("test.list") == ["patient001_frame01", "patient001_frame02"]
    assert rd("train.list")[::2] == ["patient099_frame01", "patient038_frame01", "patient044_frame01"]  # SSL4MIS order
    sl = rd("train_slices.list")
    assert sl[:3] == ["patient099_frame01_slice_1", "patient099_frame01_slice_2", "patient099_frame01_slice_3"]
    assert len(sl) == 2 * (3 + 5 + 5)        # z = 3 + pid % 3 for patients 99, 38, 44
    with h5py.File(os.path.join(out, "data", "patient044_frame02.h5")) as f:
        img, lab = f["image"][()], f["label"][()]
    src = nib.load(str(raw / "patient044" / "patient044_frame11_gt.nii.gz")).get_fdata()
    assert img.shape == (5, 10, 12) and img.dtype == np.float32 and lab.dtype == np.uint8
    assert img.min() == 0.0 and img.max() == 1.0
    assert np.array_equal(lab, np.transpose(src, (2, 1, 0)).astype(np.uint8))       # frame02 = ES (frame 11)
    with h5py.File(os.path.join(out, "data", "slices", "patient044_frame02_slice_5.h5")) as f:
        assert np.array_equal(f["image"][()], img[4])
    s = build("2d", data_path=out, labeled_num=1)
    assert len(s.labeled) == 6 and len(s.test) == 2
    assert main([str(tmp_path / "missing"), out]) == 1


def test_no_acdc_training_slice_comes_from_a_validation_or_test_patient(tmp_path):
    """train_slices.list may not hold a slice of a val.list / test.list patient: one line names the slice."""
    from tests._data_fixtures import make_acdc_root
    root = make_acdc_root(str(tmp_path / "acdc"), patients=(5, 3, 9), val=(9,), test=(1,))
    with pytest.raises(DatasetError, match=r"train_slices.list: patient009_frame01_slice_4 is a slice of patient009, "
                                           r"a patient of val.list"):
        build("2d", data_path=root, labeled_num=1)
    ok = make_acdc_root(str(tmp_path / "ok"), patients=(5, 3, 9), val=(2,), test=(1,))
    s = build("2d", data_path=ok, labeled_num=1)
    assert len(s.unlabeled) > 0
