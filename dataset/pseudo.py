"""One-time pseudo-labels as a cached dataset (Knowledge Mining's one-time generation).

``<run>/pseudo/<volume>.npz`` holds the label volume (D,H,W) uint8 of each unlabeled volume at its native
size; ``manifest.json``, written last, lists the volumes and the iteration they were labeled at. A resumed
run finds a complete manifest and reads the labels back instead of labeling again. The pseudo-labeled
slices train like labeled ones (:class:`PseudoLabeledSlices`: the same weak augmentation of image and label).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from .base import LabeledSliceDataset, VolumeRef, _cached_load
from .errors import DatasetError

MANIFEST = "manifest.json"


class PseudoLabelRef(VolumeRef):
    """An unlabeled volume with its cached pseudo-label: the image from ``base``, the label from ``label_path``."""

    def __init__(self, base: VolumeRef, label_path: str):
        self.base, self.label_path = base, label_path
        self.name, self.num_classes, self.has_label = base.name, base.num_classes, True
        self.image_path = getattr(base, "image_path", None)

    def num_slices(self) -> int:
        return self.base.num_slices()

    def slice_name(self, z: int) -> str:
        return self.base.slice_name(z)

    def cache_key(self):
        return ("pseudo", self.label_path)

    def load(self, with_label: bool = True):
        img, _, spacing, affine = _cached_load(self.base, False)
        lab = read_pseudo_label(self.label_path, img.shape) if with_label else None
        return img, lab, spacing, affine


class PseudoLabeledSlices(LabeledSliceDataset):
    """2D pseudo-labeled slices: items (PseudoLabelRef, z); its own random stream (not the labeled set's)."""
    stream = 5


def read_pseudo_label(path: str, shape: tuple) -> np.ndarray:
    try:
        with np.load(path) as f:
            lab = f["label"]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable pseudo-label file ({e}); delete the run's pseudo/ folder to "
                           f"label again") from None
    if lab.shape != tuple(shape):
        raise DatasetError(f"{path}: pseudo-label shape {lab.shape} != image shape {tuple(shape)}")
    return lab.astype(np.int64)


def _write_atomic(path: str, data: bytes | None = None, label: np.ndarray | None = None) -> None:
    """Write ``data`` (bytes) or ``label`` (.npz, key ``label``) to ``path`` via a temporary file and a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        if label is not None:
            np.savez_compressed(f, label=label)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cached_volumes(folder: str, names: Sequence[str]) -> bool:
    """Whether ``folder`` holds a complete manifest for exactly the volumes ``names``."""
    try:
        with open(os.path.join(folder, MANIFEST), encoding="utf-8") as f:
            return json.load(f).get("volumes") == list(names)
    except (OSError, ValueError):
        return False


def pseudo_label_dataset(run_path: str, refs: Sequence[VolumeRef], label_volume: Callable[[np.ndarray], np.ndarray],
                         image_size: int, *, seed: int, iteration: int, is_main: bool = True,
                         log: Callable[[str], None] = print, wait: Callable[[], None] = lambda: None
                         ) -> PseudoLabeledSlices:
    """The pseudo-labeled slices of the unlabeled volumes ``refs``, labeled once by ``label_volume(image (D,H,W))
    -> labels (D,H,W)`` (the main process writes ``<run_path>/pseudo``; ``wait`` is a barrier of every process)
    or read back from a complete cache."""
    folder = os.path.join(run_path, "pseudo")
    names = [r.name for r in refs]
    path = lambda name: os.path.join(folder, f"{name}.npz")  # noqa: E731
    if cached_volumes(folder, names):
        log(f"one-time pseudo-labels: reusing the {len(names)} volumes labeled in {folder}")
    elif is_main:
        os.makedirs(folder, exist_ok=True)
        for ref in tqdm(refs, desc="pseudo-labels", unit="volume", dynamic_ncols=True):
            image = _cached_load(ref, False)[0]
            labels = np.asarray(label_volume(image)).astype(np.uint8)
            _write_atomic(path(ref.name), label=labels)
        manifest = {"volumes": names, "iteration": int(iteration), "shape": "label (D,H,W) uint8, native size"}
        _write_atomic(os.path.join(folder, MANIFEST), data=json.dumps(manifest, indent=2).encode())
        log(f"one-time pseudo-labels: labeled {len(names)} volumes at iteration {iteration} -> {folder}")
    wait()
    refs = [PseudoLabelRef(r, path(r.name)) for r in refs]
    return PseudoLabeledSlices([(r, z) for r in refs for z in range(r.num_slices())], image_size, seed)
