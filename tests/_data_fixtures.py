"""Small on-disk fixtures for the dataset tests (written into pytest's tmp_path)."""
from __future__ import annotations

import os

import h5py
import nibabel as nib
import numpy as np

from dataset import DataConf, build_datasets


def build(script, *, image_size=64, seed=0, method="sss", **kw):
    """build_datasets of a small test run for ``script``: DataConf fields (the defaults below; ``class_spec`` is
    ``-class_names``) as keywords; unlabeled data is required unless ``method`` is supervised."""
    base = dict(dataset="acdc", data_path=None, labeled_num=None, labeled_ratio=None, video_length=4, slab_len=3,
                hu_window=(0.0, 80.0), class_spec=None, fg_oversample=0.0)
    base.update(kw)
    return build_datasets(DataConf(**base), script, image_size=image_size, seed=seed,
                          unlabeled=method != "supervised", needed_by=f"-method {method}")


def names_of(ds):
    """The volume names a built dataset holds, in its order."""
    return [r.name for r in ds.refs]


def write_h5(path, **arrays):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)


def make_acdc_root(root, patients=(5, 3, 9), slices=4, flat=False, H=40, W=36, val=(2,), test=(1,)):
    """Tiny SSL4MIS-layout root: ``patients`` in train_slices.list order, 2 frames each."""
    sd = os.path.join(root, "data") if flat else os.path.join(root, "data", "slices")
    rng = np.random.default_rng(0)
    lines = []
    for p in patients:
        for f in ("frame01", "frame02"):
            for k in range(slices, 0, -1):
                name = f"patient{p:03d}_{f}_slice_{k}"
                lab = np.zeros((H, W), np.uint8)
                lab[5 + k:15 + k, 5:15] = 1 + (k % 3)
                write_h5(os.path.join(sd, name + ".h5"), image=rng.random((H, W)).astype(np.float32), label=lab)
                lines.append(name)
    for p in tuple(val) + tuple(test):
        for f in ("frame01", "frame02"):
            lab = np.zeros((slices, H, W), np.uint8)
            lab[:, 10:20, 10:20] = 3
            write_h5(os.path.join(root, "data", f"patient{p:03d}_{f}.h5"),
                     image=rng.random((slices, H, W)).astype(np.float32), label=lab)
    with open(os.path.join(root, "train_slices.list"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    for name, ids in (("val.list", val), ("test.list", test)):
        if ids:
            with open(os.path.join(root, name), "w") as fh:
                fh.write("\n".join(f"patient{p:03d}_{f}" for p in ids for f in ("frame01", "frame02")) + "\n")
    return root


LAS = np.diag([-2.0, 2.0, 5.0, 1.0])     # like BHSD's qfac -1 headers: x flipped


def canonical_volume(D=6, H=20, W=24, seed=0):
    """HU image (D,H,W) and label in canonical orientation, asymmetric so flips are detectable."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-20, 100, size=(D, H, W)).astype(np.int16)
    lab = np.zeros((D, H, W), np.uint16)
    lab[1:3, 2:6, 3:9] = 1
    lab[3:5, 10:14, 15:20] = 4
    return hu, lab


def save_nifti(path, arr_dhw, affine, dtype):
    """Save a canonical (D,H,W) array in the voxel order implied by ``affine``."""
    from dataset.io import to_file_orientation

    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = to_file_orientation(arr_dhw.astype(dtype), affine)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    nib.save(img, path)


def make_bhsd_root(root, n=6, layout="label_192", gt_dir="ground truths", unlabeled=2, affine=LAS,
                   same_key_pairs=1):
    names = []
    for i in range(n):
        key = f"ID_{(i if i >= 2 * same_key_pairs else i // 2):08x}"
        names.append(f"{key}_ID_{i:010x}")
    if layout == "label_192":
        idir, ldir = os.path.join(root, "label_192", "images"), os.path.join(root, "label_192", gt_dir)
        ufmt = os.path.join(root, "unlabel_1980", "sub{}", "{}.nii.gz")
    else:
        idir, ldir = os.path.join(root, "imagesTr"), os.path.join(root, "labelsTr")
        ufmt = os.path.join(root, "imagesUnlabeled", "sub{}", "{}.nii.gz")
    for i, nm in enumerate(names):
        hu, lab = canonical_volume(seed=i)
        suffix = "_0000" if layout == "nnunet" else ""
        save_nifti(os.path.join(idir, nm + suffix + ".nii.gz"), hu, affine, np.int16)
        save_nifti(os.path.join(ldir, nm + ".nii.gz"), lab, affine, np.uint16)
    for j in range(unlabeled):
        hu, _ = canonical_volume(seed=100 + j)
        save_nifti(ufmt.format(j % 2, f"ID_ffff{j:04x}_ID_{j:010x}"), hu, affine, np.int16)
    return names
