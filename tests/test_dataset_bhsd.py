"""BHSD (both layouts, orientation, spacing, split) and custom NIfTI / PNG datasets."""
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from dataset import DatasetError
from dataset.io import read_nifti, window
from dataset.splits import patient_key, split_by_patient
from tests._data_fixtures import build, LAS, canonical_volume, make_bhsd_root, names_of, save_nifti


def _b(script, root, **kw):
    kw.setdefault("dataset", "bhsd")
    return build(script, data_path=str(root), **kw)


@pytest.mark.parametrize("layout,gt", [("label_192", "ground truths"), ("label_192", "ground_truths"),
                                       ("nnunet", None)])
def test_bhsd_layouts(tmp_path, layout, gt):
    names = make_bhsd_root(str(tmp_path), n=6, layout=layout, gt_dir=gt or "", unlabeled=3)
    s = _b("3d", tmp_path, labeled_num=2, image_size=32, video_length=4)
    assert s.class_names == ("EDH", "IPH", "IVH", "SAH", "SDH") and s.num_classes == 5
    assert len(s.labeled) == 2 and len(s.test) == 3 and len(s.val) == 1   # val: a patient of the training half
    assert len(s.unlabeled) == 0 + 3               # rest of the training half (none left) + the unlabeled pool
    assert not set(s.case_names["val"]) & set(s.case_names["test"])
    assert not set(s.case_names["val"]) & set(s.case_names["labeled"] + s.case_names["unlabeled"])
    assert set(names_of(s.labeled) + names_of(s.test)) <= set(names)
    c = s.labeled[0]
    assert c["image"].shape == (4, 1, 32, 32) and c["label"].shape == (4, 32, 32)
    assert c["label"].dtype == torch.int64 and int(c["label"].max()) <= 5
    u = s.unlabeled[2]
    assert u["image_w"].shape == (4, 1, 32, 32) and u["image_s2"].shape == (4, 1, 32, 32)
    v = s.test[0]
    hu, lab = canonical_volume(seed=names.index(v["name"]))
    assert v["image"].shape == (6, 20, 24)
    np.testing.assert_allclose(v["image"].numpy(), window(hu, 0, 80), atol=1e-6)
    assert torch.equal(v["label"], torch.from_numpy(lab.astype(np.int64)))
    assert v["spacing"] == (5.0, 2.0, 2.0) and v["affine"].shape == (4, 4)
    # 2D on the same data: one item per labeled slice, slabs over volumes
    s2 = _b("2d", tmp_path, labeled_num=2, image_size=32, slab_len=3)
    assert len(s2.labeled) == 12 and s2.labeled[0]["image"].shape == (1, 32, 32)
    assert s2.unlabeled[0]["image_w"].shape == (3, 1, 32, 32)


@pytest.mark.parametrize("affine", [np.diag([2.0, 2.0, 5.0, 1.0]), LAS, np.diag([-2.0, -2.0, -5.0, 1.0]),
                                    np.array([[0, 2.0, 0, 0], [0, 0, -2.0, 0], [5.0, 0, 0, 0], [0, 0, 0, 1]])])
def test_orientation_from_affine(tmp_path, affine):
    """The same anatomy saved with a flipped/permuted voxel order reads back as the same (D,H,W) array."""
    hu, lab = canonical_volume()
    p = str(tmp_path / "v.nii.gz")
    save_nifti(p, hu, affine, np.int16)
    stored = np.asanyarray(nib.load(p).dataobj)
    arr, spacing, aff = read_nifti(p)
    np.testing.assert_array_equal(arr, hu.astype(np.float32))
    assert spacing == (5.0, 2.0, 2.0)
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    if not np.allclose(affine, np.diag([2.0, 2.0, 5.0, 1.0])):
        assert stored.shape != hu.shape or not np.array_equal(np.transpose(stored, (2, 1, 0)), hu)


def test_patient_grouped_split():
    names = [f"ID_{i // 2 if i < 10 else i:08x}_ID_{i:010x}" for i in range(192)]
    tr, te = split_by_patient(names)
    assert len(tr) == 96 and len(te) == 96
    assert not set(map(patient_key, tr)) & set(map(patient_key, te))
    assert split_by_patient(list(reversed(names))) == (tr, te)     # deterministic, order-free


def test_user_split_files(tmp_path):
    names = make_bhsd_root(str(tmp_path), n=6, unlabeled=0, same_key_pairs=0)
    os.makedirs(tmp_path / "splits")
    (tmp_path / "splits" / "train.txt").write_text("\n".join(n + ".nii.gz" for n in names[:4]) + "\n")
    (tmp_path / "splits" / "test.txt").write_text("\n".join(names[4:]) + "\n")
    s = _b("3d", tmp_path, labeled_num=1)
    (val,) = s.case_names["val"]                    # one patient of train.txt held out for validation
    rest = [n for n in names[:4] if n != val]
    assert val in names[:4] and names_of(s.labeled) == rest[:1] and names_of(s.test) == names[4:]
    assert names_of(s.unlabeled) == rest[1:] and s.info["split"] == "user"
    (tmp_path / "splits" / "test.txt").write_text("ID_nope_ID_0000000000\n")
    with pytest.raises(DatasetError, match="test.txt names ID_nope"):
        _b("3d", tmp_path, labeled_num=1)


def test_custom_nifti_minmax_and_classes(tmp_path):
    root = tmp_path / "C"
    hu, lab = canonical_volume()
    for i in range(5):
        save_nifti(str(root / "imagesTr" / f"case{i}.nii.gz"), hu + i, LAS, np.int16)
        save_nifti(str(root / "labelsTr" / f"case{i}.nii.gz"), np.minimum(lab, 2), LAS, np.uint8)
    save_nifti(str(root / "imagesUnlabeled" / "u0.nii.gz"), hu, LAS, np.int16)
    (root / "classes.txt").write_text("background\nliver\ntumour\n")
    s = build("3d", dataset="custom", data_path=str(root), labeled_num=2)
    assert s.class_names == ("liver", "tumour") and s.num_classes == 2
    assert len(s.labeled) == 2 and len(s.test) == 1 and len(s.val) == 1 and len(s.unlabeled) == 2  # 4/1 split, 1 val
    v = s.test[0]
    assert float(v["image"].min()) == 0.0 and float(v["image"].max()) == 1.0      # per-volume min-max
    s = build("3d", dataset="custom", data_path=str(root), labeled_num=2, class_spec="a,b,c")
    assert s.class_names == ("a", "b", "c")
    (root / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1, "y": 2}}')
    os.remove(root / "classes.txt")
    s = build("3d", dataset="custom", data_path=str(root), labeled_num=2)
    assert s.class_names == ("x", "y") and s.info["intensity"][0] == "window"


def _png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def test_custom_png(tmp_path):
    root = tmp_path / "P"
    rng = np.random.default_rng(0)
    for split, cases in (("train", 3), ("test", 1), ("unlabeled", 2)):
        for c in range(cases):
            for k in (1, 2, 10):   # numeric order: 1, 2, 10
                img = (rng.random((24, 20)) * 200).astype(np.uint8)
                img[0, 0] = k
                case = f"{split[0] if split != 'train' else 'c'}{c}"   # case names are unique across splits
                _png(str(root / split / "images" / case / f"{k}.png"), img)
                if split != "unlabeled":
                    m = np.zeros((24, 20), np.uint8)
                    m[4:9, 3:8] = 1 + (k % 2)
                    _png(str(root / split / "masks" / case / f"{k}.png"), m)
    s = build("2d", dataset="custom", data_path=str(root), labeled_num=1, class_spec="a,b", image_size=32)
    assert len(s.labeled) == 3 and len(s.unlabeled) == 1 + 2 and len(s.test) == 1 and len(s.val) == 1
    assert not set(s.case_names["val"]) & set(s.case_names["test"])
    v = s.test[0]
    assert v["image"].shape == (3, 24, 20) and v["label"].shape == (3, 24, 20)
    assert v["label"][2, 5, 5] == 1 and v["label"][1, 5, 5] == 1 and v["label"][0, 5, 5] == 2
    it = s.labeled[0]
    assert it["image"].shape == (1, 32, 32) and it["name"] == s.case_names["labeled"][0] + "_slice_1"
    with pytest.raises(DatasetError, match="no class names"):
        build("2d", dataset="custom", data_path=str(root), labeled_num=1)
    os.remove(root / "train" / "masks" / "c1" / "10.png")
    with pytest.raises(DatasetError, match=r"c1.10\.png: mask not found"):
        build("2d", dataset="custom", data_path=str(root), labeled_num=1, class_spec="a,b")


@pytest.mark.parametrize("affine,to_file", [
    # LAS (BHSD's qfac -1 headers): voxel axis i runs right-to-left along x
    (np.diag([-2.0, 2.0, 5.0, 1.0]), lambda c: np.transpose(c, (2, 1, 0))[::-1]),
    # every axis flipped
    (np.diag([-2.0, -2.0, -5.0, 1.0]), lambda c: np.transpose(c, (2, 1, 0))[::-1, ::-1, ::-1]),
    # permuted: i -> z (S, 5 mm), j -> x (R), k -> y running posterior
    (np.array([[0, 2.0, 0, 0], [0, 0, -2.0, 0], [5.0, 0, 0, 0], [0, 0, 0, 1]]),
     lambda c: np.transpose(c, (0, 2, 1))[:, :, ::-1]),
])
def test_orientation_against_hand_built_voxel_order(tmp_path, affine, to_file):
    """Stored arrays are laid out by hand (numpy transposes/flips written from the affine, not the code's
    own inverse): read_nifti must give back the canonical (z, y, x) anatomy, and write_label_nifti must
    store a canonical label in exactly that hand-built order."""
    hu, lab = canonical_volume()                      # canonical (D=z, H=y, W=x), asymmetric
    stored = np.ascontiguousarray(to_file(hu))
    img = nib.Nifti1Image(stored, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    src = str(tmp_path / "img.nii.gz")
    nib.save(img, src)
    arr, spacing, _ = read_nifti(src)
    np.testing.assert_array_equal(arr, hu.astype(np.float32))
    assert spacing == (5.0, 2.0, 2.0)
    from dataset.io import write_label_nifti
    out = str(tmp_path / "pred.nii.gz")
    write_label_nifti(out, lab, src)
    saved = nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), to_file(lab))
    np.testing.assert_allclose(saved.affine, affine)


def test_labeled_clips_oversample_foreground(tmp_path):
    """-fg_oversample 1: every labeled clip (before augmentation) covers a labeled slice; 0: clips fall anywhere
    (here mostly on slices without a lesion)."""
    from dataset.demo import ensure_demo
    root = ensure_demo(str(tmp_path / "demo_bhsd"), "bhsd", seed=0)
    s = _b("3d", root, dataset="demo", image_size=32, video_length=4)
    from dataset.base import _cached_load
    with_lesion = [i for i, r in enumerate(s.labeled.refs) if np.asarray(_cached_load(r, True)[1]).any()]
    assert 0 < len(with_lesion) < len(s.labeled)            # the demo has healthy scans too
    hits = {}
    for p in (0.0, 1.0):
        s.labeled.fg_oversample = p
        hits[p] = [bool(np.asarray(s.labeled._clip(i, np.random.default_rng(k), True)[1]).any())
                   for i in with_lesion for k in range(4)]
    assert all(hits[1.0]) and not all(hits[0.0]), hits
    assert _b("3d", root, dataset="demo", image_size=32, fg_oversample=0.5).labeled.fg_oversample == 0.5


def test_no_test_patient_among_the_unlabeled_scans(tmp_path):
    """An unlabeled scan (unlabel_1980) of a patient whose labeled volume is in the test or validation split is
    dropped, counted in the split summary and listed in splits.json; the others stay."""
    from dataset.splits import case_name
    make_bhsd_root(str(tmp_path), n=6, unlabeled=2)
    first = _b("3d", tmp_path, labeled_num=2, image_size=32, video_length=4)
    test_case, val_case = first.case_names["test"][0], first.case_names["val"][0]
    hu, _ = canonical_volume(seed=7)
    for i, case in enumerate((test_case, val_case)):      # follow-up scans of a test and a validation patient
        save_nifti(str(tmp_path / "unlabel_1980" / "sub9" / f"{patient_key(case)}_ID_{0xabc0 + i:010x}.nii.gz"),
                   hu, LAS, np.int16)
    s = _b("3d", tmp_path, labeled_num=2, image_size=32, video_length=4)
    held_out = {patient_key(n) for n in s.case_names["test"] + s.case_names["val"]}
    assert not held_out & {patient_key(n) for n in s.case_names["unlabeled"]}
    assert len(s.unlabeled) == len(first.unlabeled) and len(s.case_names["unlabeled_dropped"]) == 2
    assert {patient_key(case_name(p)) for p in s.info["unlabeled_dropped"]} == {patient_key(test_case),
                                                                                patient_key(val_case)}
    assert "2 unlabeled volume(s) dropped: their patient is in the validation or test split" in s.summary()
