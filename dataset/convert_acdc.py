"""Convert the ACDC challenge release to the SSL4MIS processed layout.

``python -m dataset.convert_acdc RAW_DIR OUT_DIR [--slices-list train_slices.list]``

RAW_DIR holds ``patientXXX/`` folders (anywhere below it, e.g. ``training/patient001``) with
``patientXXX_frameYY.nii.gz``, ``patientXXX_frameYY_gt.nii.gz`` and ``Info.cfg`` (``ED: n``, ``ES: m``).
Output (as the processed archive): ``data/patientXXX_frame01.h5`` (ED) and ``_frame02.h5`` (ES) volumes
with ``image`` float32 (D,H,W) min-max normalised per volume and ``label`` uint8, gzip;
``data/slices/patientXXX_frameYY_slice_N.h5`` (N from 1) for the training patients; lists
``train_slices.list``, ``train.list``, ``val.list``, ``test.list`` with SSL4MIS's 70/10/20 patient split.
Arrays are in SimpleITK order (z, y, x) of the stored grid, with no reorientation, like SSL4MIS's script.
The training patient order is SSL4MIS's ``train.list`` order (so the labeled prefixes are the standard
1/3/7-case sets); slices of a frame are listed in slice order unless ``--slices-list`` gives a reference
``train_slices.list`` whose order is then copied.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

from .errors import DatasetError

VAL_IDS = (2, 19, 28, 30, 39, 45, 78, 82, 85, 87)
TEST_IDS = (1, 7, 8, 11, 13, 22, 24, 33, 52, 59, 64, 65, 66, 68, 75, 80, 81, 83, 84, 93)
# SSL4MIS train.list patient order (70 patients).
TRAIN_ORDER = (99, 38, 50, 100, 58, 21, 49, 20, 72, 40, 60, 89, 4, 56, 98, 96, 31, 18, 94, 47, 48, 55, 97, 74,
               43, 41, 63, 37, 95, 54, 26, 88, 32, 69, 6, 71, 12, 73, 61, 17, 25, 10, 57, 29, 51, 5, 36, 46,
               62, 34, 76, 92, 70, 77, 67, 3, 91, 16, 14, 44, 42, 90, 53, 27, 35, 86, 23, 9, 79, 15)


def read_info(path: str) -> dict:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: Info.cfg not found (needs 'ED: n' and 'ES: m')")
    out = {}
    with open(path) as f:
        for ln in f:
            if ":" in ln:
                k, v = ln.split(":", 1)
                out[k.strip()] = v.strip()
    for k in ("ED", "ES"):
        if k not in out:
            raise DatasetError(f"{path}: missing '{k}:' line")
    return out


def find_patients(raw: str) -> dict[int, str]:
    if not os.path.isdir(raw):
        raise DatasetError(f"{raw}: raw ACDC folder not found")
    out = {}
    for dp, dn, fn in os.walk(raw):
        m = re.fullmatch(r"patient(\d{3})", os.path.basename(dp))
        if m and "Info.cfg" in fn:
            out[int(m.group(1))] = dp
    if not out:
        raise DatasetError(f"{raw}: no patientXXX/ folders with Info.cfg found")
    return out


def _load_zyx(path: str) -> np.ndarray:
    import nibabel as nib

    if not os.path.isfile(path):
        raise DatasetError(f"{path}: NIfTI file not found")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read NIfTI file ({type(e).__name__}: {e})") from None
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))


def convert(raw: str, out: str, slices_list: str | None = None) -> dict:
    import h5py

    pats = find_patients(raw)
    ref_order = None
    if slices_list:
        with open(slices_list) as f:
            ref_order = [ln.strip() for ln in f if ln.strip()]
    os.makedirs(os.path.join(out, "data", "slices"), exist_ok=True)
    val = [p for p in VAL_IDS if p in pats]
    test = [p for p in TEST_IDS if p in pats]
    others = [p for p in pats if p not in VAL_IDS and p not in TEST_IDS]
    train = [p for p in TRAIN_ORDER if p in others] + sorted(p for p in others if p not in TRAIN_ORDER)
    n_slices = {}
    for pid, folder in sorted(pats.items()):
        info = read_info(os.path.join(folder, "Info.cfg"))
        for new, key in (("frame01", "ED"), ("frame02", "ES")):
            fr = int(info[key])
            stem = os.path.join(folder, f"patient{pid:03d}_frame{fr:02d}")
            img = _load_zyx(stem + ".nii.gz").astype(np.float32)
            lab = _load_zyx(stem + "_gt.nii.gz")
            if img.shape != lab.shape:
                raise DatasetError(f"{stem}_gt.nii.gz: label shape {lab.shape} != image shape {img.shape}")
            if lab.min() < 0 or lab.max() > 3:
                raise DatasetError(f"{stem}_gt.nii.gz: label values outside 0..3")
            lo, hi = float(img.min()), float(img.max())
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            lab = lab.astype(np.uint8)
            name = f"patient{pid:03d}_{new}"
            with h5py.File(os.path.join(out, "data", name + ".h5"), "w") as h:
                h.create_dataset("image", data=img, compression="gzip")
                h.create_dataset("label", data=lab, compression="gzip")
            n_slices[name] = img.shape[0]
            if pid in train:
                for k in range(img.shape[0]):
                    with h5py.File(os.path.join(out, "data", "slices", f"{name}_slice_{k + 1}.h5"), "w") as h:
                        h.create_dataset("image", data=img[k], compression="gzip")
                        h.create_dataset("label", data=lab[k], compression="gzip")
    vols = lambda ids: [f"patient{p:03d}_{f}" for p in ids for f in ("frame01", "frame02")]  # noqa: E731
    slice_lines = []
    for v in vols(train):
        names = [f"{v}_slice_{k + 1}" for k in range(n_slices[v])]
        if ref_order:
            pos = {n: i for i, n in enumerate(ref_order)}
            names.sort(key=lambda n: pos.get(n, len(pos)))
        slice_lines += names
    for fname, lines in (("train_slices.list", slice_lines), ("train.list", vols(train)),
                         ("val.list", vols(val)), ("test.list", vols(test))):
        with open(os.path.join(out, fname), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    return {"train": len(train), "val": len(val), "test": len(test), "train_slices": len(slice_lines)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dataset.convert_acdc", description=__doc__.split("\n\n")[0])
    p.add_argument("raw", help="ACDC release folder (patientXXX/ sub-folders anywhere below)")
    p.add_argument("out", help="output root (SSL4MIS layout)")
    p.add_argument("--slices-list", default=None, help="reference train_slices.list whose slice order to copy")
    a = p.parse_args(argv)
    try:
        info = convert(a.raw, a.out, a.slices_list)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out}: {info['train']} train / {info['val']} val / {info['test']} test patients, "
          f"{info['train_slices']} training slices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
