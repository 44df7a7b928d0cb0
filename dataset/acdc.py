"""ACDC in the SSL4MIS processed layout.

::

    <root>/train_slices.list   patientXXX_frameYY_slice_N (no extension), labeled prefix first
    <root>/train.list, val.list, test.list (test.list may be absent)
    <root>/data/slices/patientXXX_frameYY_slice_N.h5   (or flat in <root>/data/)
    <root>/data/patientXXX_frameYY.h5                  volumes (val/test)

Labeled set: all slices of the first ``labeled_num`` distinct patients of ``train_slices.list``
(1 -> 32 slices, 3 -> 68, 7 -> 136 on the real list). All other training slices are unlabeled and are
grouped into volumes by ``patientXXX_frameYY``, sorted by slice number.
"""
from __future__ import annotations

import os
import re
import sys
from collections import Counter, OrderedDict

from .base import H5SliceStackRef, H5VolumeRef
from .errors import DatasetError
from .sources import Sources

CLASS_NAMES = ("RV", "Myo", "LV")
_SLICE_RE = re.compile(r"^(patient\d+)_(frame\d+)_slice_(\d+)$")
_PATIENT_RE = re.compile(r"^(patient\d+)")


def read_list(path: str, what: str = "list file") -> list[str]:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: {what} not found")
    with open(path) as f:
        names = [ln.strip() for ln in f if ln.strip()]
    out = []
    for n in names:
        n = n.split("/")[-1]
        out.append(n[:-3] if n.endswith(".h5") else n)
    if not out:
        raise DatasetError(f"{path}: {what} is empty")
    if len(set(out)) < len(out):
        dup = [n for n, count in Counter(out).items() if count > 1]          # in order of first appearance
        more = f" and {len(dup) - 3} more" if len(dup) > 3 else ""
        print(f"warning: {path}: {len(out) - len(set(out))} duplicated line(s) ({', '.join(dup[:3])}{more}); each "
              "entry is used once", file=sys.stderr, flush=True)
        out = list(dict.fromkeys(out))
    return out


def patient_of(name: str) -> str:
    m = _PATIENT_RE.match(name)
    return m.group(1) if m else name.split("_")[0]


def parse_slice_name(name: str, list_path: str):
    m = _SLICE_RE.match(name)
    if not m:
        raise DatasetError(f"{list_path}: entry {name!r} is not of the form patientXXX_frameYY_slice_N")
    return f"{m.group(1)}_{m.group(2)}", int(m.group(3))


def labeled_prefix(slice_names: list[str], labeled_num: int, list_path: str = "train_slices.list"):
    """Split ``train_slices.list`` entries into (labeled, unlabeled) by the first ``labeled_num``
    distinct patients (all slices of those patients are labeled)."""
    patients = list(OrderedDict.fromkeys(patient_of(n) for n in slice_names))
    if labeled_num < 1:
        raise DatasetError(f"-labeled_num must be >= 1, got {labeled_num}")
    if labeled_num > len(patients):
        raise DatasetError(f"{list_path}: -labeled_num {labeled_num} is larger than the {len(patients)} "
                           f"patients in the list")
    chosen = set(patients[:labeled_num])
    lab = [n for n in slice_names if patient_of(n) in chosen]
    unl = [n for n in slice_names if patient_of(n) not in chosen]
    return lab, unl


class ACDCLayout:
    """Paths and lists of an ACDC root (validated cheaply on construction)."""

    def __init__(self, root: str):
        if not os.path.isdir(root):
            raise DatasetError(f"{root}: ACDC root folder not found (expected train_slices.list, val.list "
                               f"and data/ inside)")
        self.root = root
        self.data = os.path.join(root, "data")
        if not os.path.isdir(self.data):
            raise DatasetError(f"{self.data}: ACDC data folder not found")
        slices = os.path.join(self.data, "slices")
        self.slice_dir = slices if os.path.isdir(slices) else self.data

    def list_path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def slice_path(self, name: str) -> str:
        return os.path.join(self.slice_dir, name + ".h5")

    def volume_path(self, name: str) -> str:
        return os.path.join(self.data, name + ".h5")

    def slice_refs(self, names: list[str], has_label: bool, list_path: str):
        """Group slice entries by volume (in order of first appearance), sorted by slice number."""
        groups: "OrderedDict[str, list]" = OrderedDict()
        for n in names:
            vol, k = parse_slice_name(n, list_path)
            groups.setdefault(vol, []).append((k, n))
        refs = []
        for vol, items in groups.items():
            items.sort()
            refs.append(H5SliceStackRef([self.slice_path(n) for _, n in items], [n for _, n in items],
                                        vol, len(CLASS_NAMES), has_label=has_label))
        return refs

    def check_files(self, paths: list[str], list_path: str):
        for p in paths:
            if not os.path.isfile(p):
                raise DatasetError(f"{list_path} names {os.path.basename(p)[:-3]} but {p} does not exist")

    def volume_refs(self, list_name: str):
        lp = self.list_path(list_name)
        names = read_list(lp)
        refs = [H5VolumeRef(self.volume_path(n), n, len(CLASS_NAMES)) for n in names]
        self.check_files([r.image_path for r in refs], lp)
        return refs


def check_no_held_out_patient(train_slices: list[str], list_path: str, held_out: dict) -> None:
    """DatasetError when a training slice (labeled or unlabeled) belongs to a patient of a held-out list:
    ``held_out`` maps a list name to its volume refs. The unlabeled pool must never hold a validation or test
    patient."""
    train: dict[str, str] = {}
    for n in train_slices:                      # each patient's first slice in the list, to name it
        train.setdefault(patient_of(n), n)
    for name, refs in held_out.items():
        clash = sorted(set(train) & {patient_of(r.name) for r in refs})
        if clash:
            raise DatasetError(f"{list_path}: {train[clash[0]]} is a slice of {clash[0]}, a patient of {name} "
                               f"({len(clash)} such patient(s)); training slices must not come from validation "
                               "or test patients")


def acdc_sources(root: str, labeled_num: int | None = 3, labeled_ratio: float | None = None):
    """Resolve an ACDC root into volume references.

    Returns :class:`Sources` with ``labeled_slices`` ((ref, z) in list order) and ``test_refs`` None (with the
    reason in ``test_missing``) when test.list is absent."""
    lay = ACDCLayout(root)
    lp = lay.list_path("train_slices.list")
    names = read_list(lp, "train_slices.list")
    if labeled_ratio is not None:
        n_pat = len(set(patient_of(n) for n in names))
        labeled_num = max(1, int(round(labeled_ratio * n_pat)))
    lab, unl = labeled_prefix(names, int(labeled_num), lp)
    lay.check_files([lay.slice_path(n) for n in names], lp)
    lab_refs = lay.slice_refs(lab, True, lp)
    by_name = {n: (r, z) for r in lab_refs for z, n in enumerate(r.names)}
    labeled_slices = [by_name[n] for n in lab]
    unl_refs = lay.slice_refs(unl, False, lp) if unl else []
    val_refs = lay.volume_refs("val.list")
    test_refs, test_missing = None, None
    if os.path.isfile(lay.list_path("test.list")):
        test_refs = lay.volume_refs("test.list")
    else:
        test_missing = (f"{lay.list_path('test.list')} not found: the ACDC test split is unavailable "
                        f"(the shared sample withholds the test volumes)")
    check_no_held_out_patient(names, lp, {"val.list": val_refs, "test.list": test_refs or []})
    return Sources(labeled_slices=labeled_slices, labeled_refs=lab_refs, unlabeled_refs=unl_refs, val_refs=val_refs,
                   test_refs=test_refs, test_missing=test_missing, class_names=CLASS_NAMES,
                   info={"protocols": "acdc"})
