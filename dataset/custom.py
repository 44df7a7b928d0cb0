"""``-dataset custom``: your own NIfTI volumes or PNG slices with masks.

NIfTI layout (nnU-Net-like; ``_0000`` channel suffixes are accepted)::

    <root>/imagesTr/<case>.nii.gz      + <root>/labelsTr/<case>.nii.gz    labeled pool (required)
    <root>/imagesTs/ + labelsTs/       optional test volumes (else 20% of the pool, grouped by case)
    <root>/imagesVal/ + labelsVal/     optional validation volumes (else a patient-grouped 10 % of the training volumes)
    <root>/imagesUnlabeled/**/*.nii.gz optional unlabeled volumes

PNG layout (one folder of slices per case, slices sorted by the number in the file name)::

    <root>/train/images/<case>/<k>.png + <root>/train/masks/<case>/<k>.png   labeled
    <root>/unlabeled/images/<case>/<k>.png                                   optional
    <root>/val/images|masks/...,  <root>/test/images|masks/...              optional (else 20% of train)

Masks hold class indices (0 background, 1..K). Class names: ``-class_names A,B,C`` or ``<root>/classes.txt``
(one foreground name per line, label 1 first; a first line ``background`` is ignored) or the ``labels``
of ``<root>/dataset.json``. Intensity: per-volume min-max to [0, 1] by default; CT window (``-hu_window``)
when ``dataset.json`` says the modality is CT (``"channel_names": {"0": "CT"}`` or ``"modality"``), or
when it has ``"intensity": "ct"``; ``"intensity": "unit"`` keeps PNG grey values /255 (/65535 for 16 bit)
without stretching. Split files (``splits/*.txt``) work as for BHSD.
"""
from __future__ import annotations

import os
import re

from .base import PngVolumeRef
from .bhsd import nifti_sources
from .errors import DatasetError
from .sources import Sources
from .splits import read_json, resolve, split_by_patient, user_splits  # noqa: F401

TEST_FRACTION = 0.2


def _names_from_dataset_json(js: dict):
    labels = js.get("labels")
    if not isinstance(labels, dict) or not labels:
        return None
    pairs = []
    for k, v in labels.items():
        if isinstance(v, (int, float)) or (isinstance(v, str) and v.isdigit() and not k.isdigit()):
            pairs.append((int(v), str(k)))       # nnU-Net v2: name -> index
        else:
            pairs.append((int(k), str(v)))       # nnU-Net v1: "index" -> name
    pairs.sort()
    return tuple(n for i, n in pairs if i > 0)


def class_names_for(root: str, flag: str | None):
    if flag:
        names = tuple(n.strip() for n in flag.split(",") if n.strip())
        if names:
            return names
    p = os.path.join(root, "classes.txt")
    if os.path.isfile(p):
        with open(p) as f:
            names = [ln.strip() for ln in f if ln.strip()]
        if names and names[0].lower() in ("background", "bg"):
            names = names[1:]
        if not names:
            raise DatasetError(f"{p}: no class names")
        return tuple(names)
    p = os.path.join(root, "dataset.json")
    if os.path.isfile(p):
        names = _names_from_dataset_json(read_json(p))
        if names:
            return names
    raise DatasetError(f"{root}: no class names (pass -class_names A,B,... or write classes.txt with one "
                       f"foreground class per line)")


def intensity_for(root: str, hu_window):
    p = os.path.join(root, "dataset.json")
    ct = ("window", float(hu_window[0]), float(hu_window[1]))
    if os.path.isfile(p):
        js = read_json(p)
        mode = str(js.get("intensity", "")).lower()
        if mode == "ct":
            return ct
        if mode in ("minmax", "unit"):
            return (mode,)
        mods = js.get("channel_names") or js.get("modality") or {}
        if isinstance(mods, dict) and any(str(v).upper() == "CT" for v in mods.values()):
            return ct
    return ("minmax",)


_NUM = re.compile(r"(\d+)")


def slice_key(fn: str):
    nums = _NUM.findall(fn)
    return (int(nums[-1]) if nums else 0, fn)


def _png_cases(img_root: str, mask_root: str | None, need_masks: bool):
    if not os.path.isdir(img_root):
        return {}
    out = {}
    for case in sorted(os.listdir(img_root)):
        d = os.path.join(img_root, case)
        if not os.path.isdir(d):
            continue
        files = sorted((f for f in os.listdir(d) if f.lower().endswith(".png")), key=slice_key)
        if not files:
            raise DatasetError(f"{d}: case folder holds no PNG slices")
        masks = None
        if need_masks:
            md = os.path.join(mask_root, case)
            masks = [os.path.join(md, f) for f in files]
            for m in masks:
                if not os.path.isfile(m):
                    raise DatasetError(f"{m}: mask not found (each image slice needs a mask of the same name)")
        out[case] = ([os.path.join(d, f) for f in files], masks)
    if not out:
        raise DatasetError(f"{img_root}: no case folders with PNG slices")
    return out


def png_sources(root, labeled_num, labeled_ratio, intensity, class_names):
    K = len(class_names)

    def part(split, labeled):
        ir, mr = os.path.join(root, split, "images"), os.path.join(root, split, "masks")
        if labeled and os.path.isdir(ir) and not os.path.isdir(mr):
            raise DatasetError(f"{mr}: mask folder not found for {ir}")
        return _png_cases(ir, mr, labeled)

    pool = part("train", True)
    if not pool:
        raise DatasetError(f"{os.path.join(root, 'train', 'images')}: no labeled PNG cases found")
    test, val = part("test", True) or None, part("val", True) or None
    unl = part("unlabeled", False)
    r = resolve(pool, test, val, [], labeled_num, labeled_ratio, TEST_FRACTION, root, user_splits(root))
    every = {**pool, **(test or {}), **(val or {})}

    def ref(n, with_mask=True):
        imgs, masks = every[n]
        return PngVolumeRef(imgs, masks if with_mask else None, n, K, intensity)

    unl_refs = [ref(n, False) for n in r["train_unlabeled"]]
    unl_refs += [PngVolumeRef(v[0], None, k, K, intensity) for k, v in unl.items()]
    return Sources(labeled_refs=[ref(n) for n in r["labeled"]], unlabeled_refs=unl_refs,
                   val_refs=[ref(n) for n in r["val"]], test_refs=[ref(n) for n in r["test"]] or None,
                   test_missing=None if r["test"] else f"{root}: no test cases",
                   unlabeled_missing=None if unl_refs else f"{root}: no unlabeled cases", class_names=class_names,
                   info={"layout": "png", "split": r["origin"], "labeled": r["labeled"], "test": r["test"]})


def custom_intensity(root: str, hu_window) -> tuple:
    """How a custom dataset maps its images to [0, 1]: its dataset.json's rule (:func:`intensity_for`); PNG
    slices already in [0, 1] are read as 8/16-bit grey values (``png_unit``)."""
    intensity = intensity_for(root, hu_window)
    if intensity == ("unit",) and os.path.isdir(os.path.join(root, "train", "images")):
        return ("png_unit",)
    return intensity


def custom_sources(root: str, labeled_num=None, labeled_ratio=None, hu_window=(0.0, 80.0), class_names=None):
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: custom dataset root folder not found (see docs/data.md for the layout)")
    names = class_names_for(root, class_names)
    intensity = custom_intensity(root, hu_window)
    if os.path.isdir(os.path.join(root, "train", "images")):
        return png_sources(root, labeled_num, labeled_ratio, intensity, names)
    if os.path.isdir(os.path.join(root, "imagesTr")) or os.path.isdir(os.path.join(root, "label_192")):
        return nifti_sources(root, labeled_num, labeled_ratio, intensity, names, TEST_FRACTION, "custom")
    raise DatasetError(f"{root}: no custom data found (expected imagesTr + labelsTr with NIfTI volumes, or "
                       f"train/images/<case>/*.png + train/masks/<case>/*.png)")
