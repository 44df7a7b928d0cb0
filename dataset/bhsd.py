"""BHSD (brain haemorrhage CT) in its release layout or the nnU-Net layout.

::

    <root>/label_192/images/*.nii.gz           CT in HU
    <root>/label_192/ground truths/*.nii.gz    (or ground_truths) uint16 labels, same file names
    <root>/unlabel_1980/**/*.nii.gz            (or unlabel_2000, any sub-folders) unlabeled CT
  or
    <root>/imagesTr/*.nii.gz + labelsTr/       (optional imagesTs + labelsTs = the test half)
    <root>/imagesUnlabeled/**/*.nii.gz         (or unlabel_*) unlabeled CT

Labels 0 bg, 1 EDH, 2 IPH, 3 IVH, 4 SAH, 5 SDH. Default split 96 train / 96 test by patient key, a patient-grouped
tenth of the training half held out for validation
(:func:`dataset.splits.split_by_patient`), or the user's split (``splits/*.txt`` or ``dataset.json``).
"""
from __future__ import annotations

import os

from .base import NiftiVolumeRef
from .errors import DatasetError
from .sources import Sources
from .splits import case_name, nifti_files, pair_images_labels, patient_key, resolve, user_splits

CLASS_NAMES = ("EDH", "IPH", "IVH", "SAH", "SDH")
UNLABELED_DIRS = ("unlabel_1980", "unlabel_2000", "unlabeled", "imagesUnlabeled", "unlabel")


def find_unlabeled(root: str) -> tuple[list[str], list[str]]:
    """All NIfTI files under the unlabeled folders (recursive); DatasetError for an empty folder."""
    files, dirs = [], []
    for d in UNLABELED_DIRS:
        p = os.path.join(root, d)
        if os.path.isdir(p):
            f = nifti_files(p, recursive=True)
            if not f:
                raise DatasetError(f"{p}: unlabeled folder holds no NIfTI volumes (*.nii.gz)")
            files += f
            dirs.append(p)
    return files, dirs


def scan_nifti_root(root: str, what: str = "BHSD"):
    """Return (labeled pool, explicit test or None, explicit val or None, layout name)."""
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: {what} root folder not found")
    lab192 = os.path.join(root, "label_192")
    if os.path.isdir(lab192):
        img = os.path.join(lab192, "images")
        if not os.path.isdir(img):
            raise DatasetError(f"{img}: folder not found (expected label_192/images and label_192/ground truths)")
        gt = next((os.path.join(lab192, d) for d in ("ground truths", "ground_truths", "labels")
                   if os.path.isdir(os.path.join(lab192, d))), None)
        if gt is None:
            raise DatasetError(f"{os.path.join(lab192, 'ground truths')}: label folder not found "
                               f"(also tried ground_truths)")
        return pair_images_labels(img, gt), None, None, "label_192"
    tr = os.path.join(root, "imagesTr")
    if os.path.isdir(tr):
        ltr = os.path.join(root, "labelsTr")
        if not os.path.isdir(ltr):
            raise DatasetError(f"{ltr}: label folder not found (nnU-Net layout needs imagesTr and labelsTr)")
        pool = pair_images_labels(tr, ltr)
        test = val = None
        ts, lts = os.path.join(root, "imagesTs"), os.path.join(root, "labelsTs")
        if os.path.isdir(ts) and os.path.isdir(lts):
            test = pair_images_labels(ts, lts)
        va, lva = os.path.join(root, "imagesVal"), os.path.join(root, "labelsVal")
        if os.path.isdir(va):
            if not os.path.isdir(lva):
                raise DatasetError(f"{lva}: label folder not found for {va}")
            val = pair_images_labels(va, lva)
        return pool, test, val, "nnunet"
    raise DatasetError(f"{root}: no {what} data found (expected label_192/images + label_192/ground truths, "
                       f"or imagesTr + labelsTr)")


def drop_held_out_patients(files: list[str], held_out: list[str]) -> tuple[list[str], list[str]]:
    """(kept, dropped) unlabeled files: a file whose patient key (:func:`dataset.splits.patient_key` of its case
    name, BHSD's ``ID_xxxxxxxx``) is that of a validation or test case (``held_out`` case names) is dropped, so
    that no scan of a held-out patient is trained on, not even unlabeled."""
    keys = {patient_key(n) for n in held_out}
    dropped = [p for p in files if patient_key(case_name(p)) in keys]
    return [p for p in files if patient_key(case_name(p)) not in keys], dropped


def nifti_sources(root, labeled_num, labeled_ratio, intensity, class_names, test_fraction, what):
    pool, test, val, layout = scan_nifti_root(root, what)
    unl_files, unl_dirs = find_unlabeled(root)
    user = user_splits(root)
    every = dict(pool)
    every.update(test or {})
    every.update(val or {})
    r = resolve(pool, test, val, unl_files, labeled_num, labeled_ratio, test_fraction, root, user)
    K = len(class_names)

    def ref(n):
        ip, lp = every[n]
        return NiftiVolumeRef(ip, lp, n, K, intensity)

    unl_refs = [NiftiVolumeRef(every[n][0], None, n, K, intensity) for n in r["train_unlabeled"]]
    kept, dropped = drop_held_out_patients(unl_files, (r["val"] or []) + (r["test"] or []))
    unl_refs += [NiftiVolumeRef(p, None, case_name(p), K, intensity) for p in kept]
    missing = None
    if not unl_refs:
        folder = "imagesUnlabeled/ folder" if what == "custom" else "unlabel_1980/ (or other unlabel*) folder"
        missing = (f"{root}: no unlabeled data (all {len(r['labeled'])} training volumes are labeled and there is "
                   f"no {folder})")
    test_refs = [ref(n) for n in r["test"]] if r["test"] else None
    return Sources(labeled_refs=[ref(n) for n in r["labeled"]], unlabeled_refs=unl_refs,
                   val_refs=[ref(n) for n in r["val"]] if r["val"] else [], test_refs=test_refs,
                   test_missing=None if test_refs else f"{root}: no test volumes", unlabeled_missing=missing,
                   class_names=tuple(class_names),
                   info={"layout": layout, "split": r["origin"], "labeled": r["labeled"], "test": r["test"],
                         "unlabeled_dirs": unl_dirs, "unlabeled_dropped": dropped})


def bhsd_intensity(hu_window) -> tuple:
    """CT in HU through the brain window ``-hu_window`` (default [0, 80])."""
    return ("window", float(hu_window[0]), float(hu_window[1]))


def bhsd_sources(root: str, labeled_num: int | None = None, labeled_ratio: float | None = None,
                 hu_window=(0.0, 80.0)):
    return nifti_sources(root, labeled_num, labeled_ratio, bhsd_intensity(hu_window), CLASS_NAMES, 0.5, "BHSD")
