"""Volume pools, patient-grouped splits and user split files (shared by BHSD and custom data)."""
from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

from .errors import DatasetError

SPLIT_SEED = 2023  # the default split does not depend on -seed: every run sees the same test set
VAL_FRACTION = 0.1  # default validation split: a patient-grouped tenth of the training half, never the test set
_ID_RE = re.compile(r"^(ID_[0-9A-Za-z]+)")
NIFTI_EXT = (".nii.gz", ".nii")


def case_name(filename: str) -> str:
    """File name -> case name: strip the folder, .nii(.gz)/.png/.h5 and an nnU-Net ``_0000`` channel suffix."""
    n = os.path.basename(filename.strip())
    for ext in NIFTI_EXT + (".png", ".h5"):
        if n.endswith(ext):
            n = n[: -len(ext)]
            break
    if re.search(r"_\d{4}$", n):
        n = n[:-5]
    return n


def patient_key(name: str) -> str:
    """BHSD: the first ``ID_xxxxxxxx`` of the name (a patient/study key); otherwise the case name."""
    m = _ID_RE.match(name)
    return m.group(1) if m else name


def split_by_patient(names: Sequence[str], test_fraction: float = 0.5, seed: int = SPLIT_SEED,
                     key=patient_key) -> tuple[list[str], list[str]]:
    """Deterministic train/test split of case names, grouped by ``key`` (no key in both halves).

    Keys are shuffled with ``seed``; groups fill the training half up to round((1-f)*n) volumes, the
    rest go to the test half (exact 96/96 for BHSD's 192 volumes). Both halves keep the sorted-name
    order of a stable shuffle, so the first rows of the training half are the labeled ones."""
    names = sorted(set(names))
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(key(n), []).append(n)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    target = int(round((1.0 - test_fraction) * len(names)))
    train, test = [], []
    for i in order:
        g = groups[keys[i]]
        (train if len(train) + len(g) <= target else test).extend(g)
    return train, test


def read_split_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: split file not found")
    with open(path) as f:
        out = [case_name(ln) for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise DatasetError(f"{path}: split file is empty")
    return out


def user_splits(root: str) -> dict | None:
    """User-supplied split: ``<root>/splits/{train,test}.txt`` (optional ``labeled.txt``, ``val.txt``), or a
    ``<root>/dataset.json`` with nnU-Net style ``training`` / ``test`` lists. Returns None when neither."""
    d = os.path.join(root, "splits")
    if os.path.isdir(d):
        out = {}
        for k in ("train", "test", "labeled", "val"):
            p = os.path.join(d, f"{k}.txt")
            if os.path.isfile(p):
                out[k] = (read_split_file(p), p)
        if "train" not in out and "labeled" not in out:
            raise DatasetError(f"{d}: split folder needs train.txt (or labeled.txt)")
        return out
    p = os.path.join(root, "dataset.json")
    if os.path.isfile(p):
        js = read_json(p)
        if "training" in js and "test" in js:
            def names(entries):
                out = []
                for e in entries:
                    v = e.get("image") if isinstance(e, dict) else e
                    out.append(case_name(v))
                return out
            return {"train": (names(js["training"]), p), "test": (names(js["test"]), p)}
    return None


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read JSON ({type(e).__name__}: {e})") from None


def nifti_files(folder: str, recursive: bool = False) -> list[str]:
    out = []
    if recursive:
        for dp, dn, fn in os.walk(folder):
            dn.sort()
            out += [os.path.join(dp, f) for f in sorted(fn) if f.endswith(NIFTI_EXT)]
    else:
        out = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(NIFTI_EXT)]
    return out


def pair_images_labels(img_dir: str, lab_dir: str | None) -> dict[str, tuple[str, str | None]]:
    """case -> (image path, label path); DatasetError on an image without label or vice versa."""
    imgs = nifti_files(img_dir)
    if not imgs:
        raise DatasetError(f"{img_dir}: no NIfTI volumes (*.nii.gz) found")
    out: dict[str, tuple[str, str | None]] = {}
    for p in imgs:
        c = case_name(p)
        if c in out:
            raise DatasetError(f"{p}: two image files for case {c}")
        out[c] = (p, None)
    if lab_dir is None:
        return out
    labs = {case_name(p): p for p in nifti_files(lab_dir)}
    for c, (p, _) in out.items():
        if c not in labs:
            raise DatasetError(f"{p}: no label file for this image (expected {os.path.join(lab_dir, c + '.nii.gz')})")
        out[c] = (p, labs[c])
    extra = sorted(set(labs) - set(out))
    if extra:
        raise DatasetError(f"{labs[extra[0]]}: label file without an image in {img_dir}")
    return out


def resolve(pool: dict, explicit_test: dict | None, explicit_val: dict | None, unlabeled_pool: list,
            labeled_num: int | None, labeled_ratio: float | None, test_fraction: float, root: str,
            user: dict | None = None) -> dict:
    """Common split logic for labeled pools. Returns case-name lists
    ``labeled``, ``train_unlabeled``, ``test``, ``val`` and where the split came from.

    Without a user ``val.txt`` or a validation folder, the validation cases are a patient-grouped
    :data:`VAL_FRACTION` of the training half (at least one patient group), taken out before the labeled
    cases are chosen: a checkpoint is never selected on the test split."""
    origin = "default"
    if user:
        origin = "user"
        known = set(pool) | set(explicit_test or {})

        def check(lst, path):
            for n in lst:
                if n not in known:
                    raise DatasetError(f"{path} names {n} but no such labeled volume exists under {root}")
            return list(lst)
        if "train" in user:
            train = check(*user["train"])
        else:
            train = check(*user["labeled"])
        test = check(*user["test"]) if "test" in user else (
            sorted(explicit_test) if explicit_test else [n for n in sorted(pool) if n not in set(train)])
        overlap = set(map(patient_key, train)) & set(map(patient_key, test))
        if overlap:
            raise DatasetError(f"{(user.get('test') or user.get('train'))[1]}: patient key {sorted(overlap)[0]} "
                               f"is in both the training and the test split")
    elif explicit_test:
        train, test = sorted(pool), sorted(explicit_test)
        origin = "folders"
    else:
        train, test = split_by_patient(list(pool), test_fraction)
    val = None
    if user and "val" in user:
        val = check(*user["val"])
    elif explicit_val:
        val = sorted(explicit_val)
    else:
        _, val = split_by_patient(train, VAL_FRACTION, seed=SPLIT_SEED + 1)
        if not val:  # fewer than 10 training volumes: hold out one patient group
            _, val = split_by_patient(train, 1.0 / max(2, len(train)), seed=SPLIT_SEED + 1)
        train = [n for n in train if n not in set(val)]   # the training order (labeled rows first) is kept
        if not train:
            raise DatasetError(f"{root}: too few training volumes to hold out a validation split")
    if user and "labeled" in user:
        labeled = [n for n in check(*user["labeled"]) if n not in set(val)]
        bad = [n for n in labeled if n not in set(train)]
        if bad and "train" in user:
            raise DatasetError(f"{user['labeled'][1]}: {bad[0]} is not in the training split")
    else:
        if labeled_ratio is not None:
            n = max(1, int(round(labeled_ratio * len(train))))
        else:
            n = len(train) if labeled_num is None else int(labeled_num)
        if n > len(train):
            raise DatasetError(f"{root}: -labeled_num {n} is larger than the {len(train)} volumes of the "
                               f"training split")
        labeled = train[:n]
    if not labeled:
        raise DatasetError(f"{root}: the labeled training set is empty")
    lab_set = set(labeled)
    train_unl = [n for n in train if n not in lab_set]
    overlap = set(map(patient_key, val)) & set(map(patient_key, test))
    if overlap:
        raise DatasetError(f"{root}: patient key {sorted(overlap)[0]} is in both the validation and the test split "
                           f"(checkpoints must never be selected on the reported split)")
    return {"labeled": labeled, "train_unlabeled": train_unl, "test": test, "val": val,
            "unlabeled_pool": list(unlabeled_pool), "origin": origin}
