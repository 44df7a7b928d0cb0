"""Volume references and the generic datasets built on them.

A *volume reference* knows where one volume lives and how to read it (whole, or a few slices).
The datasets turn lists of references into the items the training and evaluation code consume:

=====================  ======================================================================
class                  item
=====================  ======================================================================
LabeledSliceDataset    {"image": (1,S,S) f32 [0,1], "label": (S,S) i64, "name"}
UnlabeledSlabDataset   {"image_w","image_s1","image_s2": (L,1,S,S) f32, "name"}
LabeledClipDataset     {"image": (T,1,S,S) f32, "label": (T,S,S) i64, "name"}
UnlabeledClipDataset   {"image_w","image_s1","image_s2": (T,1,S,S) f32, "name"}
VolumeDataset          {"image": (D,H,W) f32 native size, "label": (D,H,W) i64, "name",
                        "spacing": (sz,sy,sx) | None, "affine": 4x4 | None}
=====================  ======================================================================

Every random draw in ``__getitem__`` comes from generators seeded by (seed, stream, epoch, index):
``set_epoch(epoch)`` changes them, nothing else does.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import io as dio
from .errors import DatasetError
from .transforms import (StrongParams, WeakParams, apply_weak, sample_weak, strong_photometric)

# ---------------------------------------------------------------------------------------------
# deterministic per-item random generators


def item_generators(seed: int, stream: int, epoch: int, index: int):
    """(numpy Generator, torch Generator) for one item; a pure function of the four integers."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(stream), int(epoch) & 0xFFFFFFFF, int(index)])
    rng = np.random.default_rng(ss)
    gen = torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF))
    return rng, gen


# ---------------------------------------------------------------------------------------------
# volume references


class VolumeRef:
    """Base class. ``load()`` -> (image (D,H,W) f32 [0,1], label (D,H,W) i64 | None, spacing, affine);
    ``load_slices(idx)`` -> (image (n,H,W), label (n,H,W) | None) for slice indices ``idx``."""

    name: str
    has_label: bool = False
    num_classes: int = 0

    def num_slices(self) -> int:
        raise NotImplementedError

    def load(self, with_label: bool = True):
        raise NotImplementedError

    def slice_name(self, z: int) -> str:
        return f"{self.name}_slice_{z + 1}"

    def load_slices(self, idx: Sequence[int], with_label: bool = True):
        img, lab, _, _ = _cached_load(self, with_label)
        idx = np.asarray(idx, dtype=np.int64)
        return img[idx], (None if lab is None else lab[idx])

    def cache_key(self):
        return (type(self).__name__, self.name, getattr(self, "image_path", None))


_CACHE: "OrderedDict" = OrderedDict()
_CACHE_SIZE = 4


def _cached_load(ref: VolumeRef, with_label: bool):
    """Small per-process LRU of whole volumes (2D items and clips read a few slices of a volume)."""
    key = (ref.cache_key(), with_label and ref.has_label, os.getpid())
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    out = ref.load(with_label=with_label)
    _CACHE[key] = out
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return out


class H5VolumeRef(VolumeRef):
    """An SSL4MIS volume h5 (``image`` (D,H,W) float in [0,1], ``label`` (D,H,W) uint8)."""

    def __init__(self, path: str, name: str, num_classes: int, has_label: bool = True):
        self.image_path, self.name, self.num_classes, self.has_label = path, name, num_classes, has_label
        self._n = None

    def num_slices(self) -> int:
        if self._n is None:
            self._n = int(dio.h5_shape(self.image_path)[0])
        return self._n

    def load(self, with_label: bool = True):
        keys = ("image", "label") if (with_label and self.has_label) else ("image",)
        arrs = dio.read_h5(self.image_path, keys)
        img = arrs[0]
        if img.ndim != 3:
            raise DatasetError(f"{self.image_path}: expected a 3-D 'image' (D,H,W), got shape {img.shape}")
        lab = None
        if len(arrs) > 1:
            if arrs[1].shape != img.shape:
                raise DatasetError(f"{self.image_path}: image shape {img.shape} != label shape {arrs[1].shape}")
            lab = dio.check_label(arrs[1], self.num_classes, self.image_path)
        return dio.normalise(img, ("unit",), self.image_path), lab, None, None


class H5SliceStackRef(VolumeRef):
    """A volume stored as one SSL4MIS slice h5 per slice (``image``/``label`` (H,W)), in slice order.
    Only the requested slices are read."""

    def __init__(self, paths: Sequence[str], names: Sequence[str], name: str, num_classes: int,
                 has_label: bool = True):
        self.paths, self.names, self.name = list(paths), list(names), name
        self.num_classes, self.has_label = num_classes, has_label
        self.image_path = self.paths[0] if self.paths else None

    def num_slices(self) -> int:
        return len(self.paths)

    def slice_name(self, z: int) -> str:
        return self.names[z]

    def _read(self, z: int, with_label: bool):
        path = self.paths[z]
        keys = ("image", "label") if (with_label and self.has_label) else ("image",)
        arrs = dio.read_h5(path, keys)
        img = arrs[0]
        if img.ndim != 2:
            raise DatasetError(f"{path}: expected a 2-D slice 'image' (H,W), got shape {img.shape}")
        lab = None
        if len(arrs) > 1:
            if arrs[1].shape != img.shape:
                raise DatasetError(f"{path}: image shape {img.shape} != label shape {arrs[1].shape}")
            lab = dio.check_label(arrs[1], self.num_classes, path)
        return dio.normalise(img, ("unit",), path), lab

    def load_slices(self, idx: Sequence[int], with_label: bool = True):
        got = [self._read(int(z), with_label) for z in idx]
        shapes = {g[0].shape for g in got}
        if len(shapes) > 1:
            raise DatasetError(f"{self.paths[int(idx[0])]}: slices of {self.name} differ in size {sorted(shapes)}")
        img = np.stack([g[0] for g in got])
        lab = np.stack([g[1] for g in got]) if got and got[0][1] is not None else None
        return img, lab

    def load(self, with_label: bool = True):
        img, lab = self.load_slices(range(len(self.paths)), with_label)
        return img, lab, None, None


class NiftiVolumeRef(VolumeRef):
    """A NIfTI image (+ optional NIfTI label), reoriented to RAS, (D=z,H=y,W=x)."""

    def __init__(self, image_path: str, label_path: str | None, name: str, num_classes: int, intensity):
        self.image_path, self.label_path, self.name = image_path, label_path, name
        self.num_classes, self.intensity = num_classes, tuple(intensity)
        self.has_label = label_path is not None
        self._n = None

    def num_slices(self) -> int:
        if self._n is None:
            self._n = dio.nifti_num_slices(self.image_path)
        return self._n

    def load(self, with_label: bool = True):
        img, spacing, affine = dio.read_nifti(self.image_path)
        lab = None
        if with_label and self.has_label:
            lab, _, _ = dio.read_nifti(self.label_path, is_label=True)
            if lab.shape != img.shape:
                raise DatasetError(f"{self.label_path}: label shape {lab.shape} (D,H,W) != image shape "
                                   f"{img.shape} of {self.image_path}")
            lab = dio.check_label(lab, self.num_classes, self.label_path)
        return dio.normalise(img, self.intensity, self.image_path), lab, spacing, affine


class PngVolumeRef(VolumeRef):
    """A volume stored as PNG slices (sorted numerically) with optional PNG masks of the same names."""

    def __init__(self, image_paths: Sequence[str], mask_paths: Sequence[str] | None, name: str,
                 num_classes: int, intensity=("minmax",)):
        self.paths = list(image_paths)
        self.mask_paths = None if mask_paths is None else list(mask_paths)
        self.name, self.num_classes, self.intensity = name, num_classes, tuple(intensity)
        self.has_label = mask_paths is not None
        self.image_path = self.paths[0] if self.paths else None

    def num_slices(self) -> int:
        return len(self.paths)

    def load(self, with_label: bool = True):
        imgs = [dio.read_png(p) for p in self.paths]
        shapes = {a.shape for a in imgs}
        if len(shapes) > 1:
            raise DatasetError(f"{os.path.dirname(self.paths[0])}: slices of case {self.name} differ in size "
                               f"{sorted(shapes)}")
        img = dio.normalise(np.stack(imgs).astype(np.float32), self.intensity, os.path.dirname(self.paths[0]))
        lab = None
        if with_label and self.has_label:
            labs = []
            for ip, mp, a in zip(self.paths, self.mask_paths, imgs):
                m = dio.read_png(mp)
                if m.shape != a.shape:
                    raise DatasetError(f"{mp}: mask shape {m.shape} != image shape {a.shape} of {ip}")
                labs.append(dio.check_label(m, self.num_classes, mp))
            lab = np.stack(labs)
        return img, lab, None, None


# ---------------------------------------------------------------------------------------------
# datasets


class _TrainBase(Dataset):
    stream = 0

    def __init__(self, image_size: int, seed: int = 0, augment: bool = True,
                 weak: WeakParams | None = None, strong: StrongParams | None = None):
        self.image_size, self.seed, self.augment = int(image_size), int(seed), augment
        self.weak = weak or WeakParams()
        self.strong = strong or StrongParams()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _gens(self, index: int):
        return item_generators(self.seed, self.stream, self.epoch, index)

    def _weak(self, img: np.ndarray, lab: np.ndarray | None, rng):
        """img (N,H,W) -> ((N,1,S,S) f32, (N,S,S) i64 | None), one transform for the stack."""
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[:, None]
        y = None if lab is None else torch.from_numpy(np.ascontiguousarray(lab)).long()
        t = sample_weak(rng, self.weak) if self.augment else {"k": 0, "flip": -1, "angle": 0.0,
                                                              "zoom": 1.0, "tx": 0.0, "ty": 0.0}
        return apply_weak(x, y, t, self.image_size)

    def _three_views(self, img: np.ndarray, rng, gen):
        w, _ = self._weak(img, None, rng)
        s1 = strong_photometric(w, rng, gen, self.strong)
        s2 = strong_photometric(w, rng, gen, self.strong)
        return w, s1, s2


def stack_indices(n: int, start: int, length: int) -> np.ndarray:
    """``length`` consecutive slice indices from ``start``; past the end the last slice repeats."""
    return np.clip(np.arange(start, start + length), 0, max(n - 1, 0))


class LabeledSliceDataset(_TrainBase):
    """2D labeled slices: items (ref, z)."""
    stream = 1

    def __init__(self, items: Sequence[tuple], image_size: int, seed: int = 0, **kw):
        super().__init__(image_size, seed, **kw)
        self.items = list(items)
        if not self.items:
            raise DatasetError("the labeled training set is empty")

    def __len__(self):
        return len(self.items)

    @property
    def names(self):
        return [ref.slice_name(z) for ref, z in self.items]

    def __getitem__(self, index: int):
        ref, z = self.items[index]
        rng, _ = self._gens(index)
        img, lab = ref.load_slices([z], with_label=True)
        x, y = self._weak(img, lab, rng)
        return {"image": x[0], "label": y[0], "name": ref.slice_name(z)}


class UnlabeledSlabDataset(_TrainBase):
    """2D unlabeled slabs of ``slab_len`` consecutive slices of one volume; items (ref, start).
    One item per distinct slab start (0 .. n-L) of every volume; shorter volumes give one slab padded by
    repeating the last slice."""
    stream = 2

    def __init__(self, refs: Sequence[VolumeRef], slab_len: int, image_size: int, seed: int = 0, **kw):
        super().__init__(image_size, seed, **kw)
        self.slab_len = int(slab_len)
        self.refs = list(refs)
        self.items = [(r, s) for r in self.refs for s in range(max(1, r.num_slices() - self.slab_len + 1))]
        if not self.items:
            raise DatasetError("the unlabeled training set is empty")

    def __len__(self):
        return len(self.items)

    @property
    def groups(self) -> list[int]:
        """The volume (index into ``refs``) of every item: the training loader puts slabs of distinct
        volumes into one step (``ResumableSampler(groups=...)``)."""
        return [i for i, r in enumerate(self.refs) for _ in range(max(1, r.num_slices() - self.slab_len + 1))]

    def __getitem__(self, index: int):
        ref, start = self.items[index]
        rng, gen = self._gens(index)
        idx = stack_indices(ref.num_slices(), start, self.slab_len)
        img, _ = ref.load_slices(idx, with_label=False)
        w, s1, s2 = self._three_views(img, rng, gen)
        last = min(start + self.slab_len, ref.num_slices())
        return {"image_w": w, "image_s1": s1, "image_s2": s2,
                "name": f"{ref.name}_slices_{start + 1}-{last}"}


def class_slices(lab: np.ndarray) -> np.ndarray:
    """lab (n,H,W) int -> (n, K) bool: slice z holds class k+1 (K = the largest label present)."""
    n, top = lab.shape[0], int(lab.max()) if lab.size else 0
    flat = lab.reshape(n, -1)
    return np.stack([(flat == c).any(1) for c in range(1, top + 1)], 1) if top > 0 else np.zeros((n, 0), bool)


def foreground_clip_start(presence: np.ndarray, length: int, rng) -> int | None:
    """nnU-Net-style foreground oversampling for a clip of ``length`` slices: a class present in the volume
    is drawn uniformly, then a slice holding it, then a clip start that keeps that slice inside the clip (the
    clip stays inside the volume when it fits). presence (n,K) bool (:func:`class_slices`); None if no class."""
    classes = np.flatnonzero(presence.any(0))
    if classes.size == 0:
        return None
    c = classes[int(rng.integers(0, classes.size))]
    zs = np.flatnonzero(presence[:, c])
    z = int(zs[int(rng.integers(0, zs.size))])
    n = presence.shape[0]
    lo, hi = max(0, z - length + 1), max(0, min(z, n - length))
    return int(rng.integers(lo, max(lo, hi) + 1))


class _ClipBase(_TrainBase):
    def __init__(self, refs: Sequence[VolumeRef], video_length: int, image_size: int, seed: int = 0,
                 what: str = "labeled", fg_oversample: float = 0.0, **kw):
        super().__init__(image_size, seed, **kw)
        self.refs, self.video_length = list(refs), int(video_length)
        self.fg_oversample = float(fg_oversample)
        self._presence: dict[int, np.ndarray] = {}
        if not self.refs:
            raise DatasetError(f"the {what} training set is empty")

    def __len__(self):
        return len(self.refs)

    def _clip(self, index, rng, with_label):
        ref = self.refs[index]
        if with_label:
            img, lab, _, _ = _cached_load(ref, True)
        else:
            img, lab = _cached_load(ref, False)[0], None
        n = img.shape[0]
        start = None
        if lab is not None and self.fg_oversample > 0 and rng.random() < self.fg_oversample:
            if index not in self._presence:
                self._presence[index] = class_slices(lab)
            start = foreground_clip_start(self._presence[index], self.video_length, rng)
        if start is None:
            start = int(rng.integers(0, max(1, n - self.video_length + 1)))
        idx = stack_indices(n, start, self.video_length)
        name = f"{ref.name}_slices_{start + 1}-{min(start + self.video_length, n)}"
        return img[idx], (None if lab is None else lab[idx]), name


class LabeledClipDataset(_ClipBase):
    """3D labeled clips: one item per volume per epoch, a random run of T consecutive slices
    (volumes shorter than T are padded by repeating the last slice); with probability ``fg_oversample`` the
    run holds a slice of a randomly drawn present class (:func:`foreground_clip_start`, nnU-Net's foreground
    oversampling: small lesions on few slices are otherwise rarely seen)."""
    stream = 3

    def __getitem__(self, index: int):
        rng, _ = self._gens(index)
        img, lab, name = self._clip(index, rng, True)
        x, y = self._weak(img, lab, rng)
        return {"image": x, "label": y, "name": name}


class UnlabeledClipDataset(_ClipBase):
    """3D unlabeled clips with one weak and two strong views."""
    stream = 4

    def __init__(self, refs, video_length, image_size, seed=0, **kw):
        super().__init__(refs, video_length, image_size, seed, what="unlabeled", **kw)

    def __getitem__(self, index: int):
        rng, gen = self._gens(index)
        img, _, name = self._clip(index, rng, False)
        w, s1, s2 = self._three_views(img, rng, gen)
        return {"image_w": w, "image_s1": s1, "image_s2": s2, "name": name}


class VolumeDataset(Dataset):
    """Whole labeled volumes at native size for validation/test (no augmentation, no resizing)."""

    def __init__(self, refs: Sequence[VolumeRef], what: str = "validation"):
        self.refs = list(refs)
        if not self.refs:
            raise DatasetError(f"the {what} set is empty")
        for r in self.refs:
            if not r.has_label:
                raise DatasetError(f"{r.image_path}: {what} volume {r.name} has no label file")

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, index: int):
        ref = self.refs[index]
        img, lab, spacing, affine = ref.load(with_label=True)
        return {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                "label": torch.from_numpy(np.ascontiguousarray(lab)).long(),
                "name": ref.name,
                "spacing": None if spacing is None else tuple(float(s) for s in spacing),
                "affine": None if affine is None else np.asarray(affine, dtype=np.float64),
                "source": ref.image_path if isinstance(ref, NiftiVolumeRef) else None}
