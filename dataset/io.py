"""Readers for the on-disk formats (HDF5, NIfTI, PNG) with uniform, file-naming errors.

All readers return numpy arrays in (D, H, W) slice-first order. Intensities are mapped to [0, 1]
by :func:`normalise` (CT window or per-volume min-max).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .errors import DatasetError

# ---------------------------------------------------------------------------------------------
# intensity


def window(hu: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """CT window: clip HU to [lo, hi] and map linearly to [0, 1] (float32)."""
    out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def minmax(x: np.ndarray) -> np.ndarray:
    """Per-volume min-max to [0, 1] (float32); a constant volume maps to 0."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    return (x - np.float32(lo)) / np.float32(hi - lo)


def normalise(x: np.ndarray, intensity, path: str) -> np.ndarray:
    """``intensity``: ("window", lo, hi) | ("minmax",) | ("unit",) (already in [0, 1], clipped).

    DatasetError naming ``path`` for an empty image or one with NaN/inf values (clipping or min-max would
    otherwise turn them into silent garbage)."""
    if np.asarray(x).size == 0:
        raise DatasetError(f"{path}: image is empty (shape {np.asarray(x).shape})")
    if np.asarray(x).dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            raise DatasetError(f"{path}: image has {bad} non-finite values (NaN/inf); expected finite intensities")
    kind = intensity[0]
    if kind == "window":
        return window(x, intensity[1], intensity[2])
    if kind == "minmax":
        return minmax(x)
    if kind == "unit":
        return np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    if kind == "png_unit":  # 8-bit or 16-bit grey values without stretching
        x = np.asarray(x, dtype=np.float32)
        return x / (65535.0 if x.max() > 255 else 255.0)
    raise ValueError(f"unknown intensity mode {intensity!r}")


def check_label(label: np.ndarray, num_classes: int, path: str) -> np.ndarray:
    """Integer label map with values in 0..num_classes (K foreground classes), as int64."""
    label = np.asarray(label)
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise DatasetError(f"{path}: label map has non-integer values (expected integers 0..{num_classes})")
    if label.dtype.kind == "b":
        label = label.astype(np.uint8)
    if label.size:
        lo, hi = label.min(), label.max()
        if lo < 0 or hi > num_classes:
            bad = sorted(int(v) for v in np.unique(label) if v < 0 or v > num_classes)[:5]
            raise DatasetError(f"{path}: label values {bad} outside the class range 0..{num_classes}")
    return label.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# HDF5 (ACDC, SSL4MIS layout)


def read_h5(path: str, keys: Sequence[str] = ("image", "label")) -> list[np.ndarray]:
    """Read datasets ``keys`` of an h5 file; DatasetError on a missing/corrupt file or key."""
    import h5py

    if not os.path.isfile(path):
        raise DatasetError(f"{path}: HDF5 file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if missing:
                raise DatasetError(f"{path}: missing key(s) {', '.join(missing)} "
                                   f"(expected datasets {', '.join(keys)}; "
                                   f"found {', '.join(sorted(f.keys())) or 'none'})")
            return [np.asarray(f[k][()]) for k in keys]
    except DatasetError:
        raise
    except Exception as e:  # OSError from a truncated/corrupt file, KeyError ...
        raise DatasetError(f"{path}: cannot read HDF5 file ({type(e).__name__}: {e})") from None


def h5_shape(path: str, key: str = "image") -> tuple[int, ...]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DatasetError(f"{path}: missing key {key!r}")
            return tuple(f[key].shape)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: cannot read HDF5 file ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------
# NIfTI


def _nib_load(path: str):
    import nibabel as nib

    if not os.path.isfile(path):
        raise DatasetError(f"{path}: NIfTI file not found")
    try:
        img = nib.load(path)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read NIfTI file ({type(e).__name__}: {e})") from None
    if len(img.shape) < 3 or any(s != 1 for s in img.shape[3:]):
        raise DatasetError(f"{path}: expected a 3-D volume, got shape {tuple(img.shape)}")
    return img


def nifti_num_slices(path: str) -> int:
    """Number of axial slices after reorientation to RAS (reads the header only)."""
    import nibabel as nib

    img = _nib_load(path)
    ornt = nib.orientations.io_orientation(img.affine)
    z_axis = int(np.argmax(ornt[:, 0] == 2))
    return int(img.shape[z_axis])


def affine_problem(affine) -> str | None:
    """Why a NIfTI voxel-to-world matrix cannot place a volume (None when it can): NaN/inf entries, or a singular
    matrix (a voxel size of 0 along some axis)."""
    a = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        return "affine holds NaN/inf values (expected a finite voxel-to-world matrix)"
    zooms = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    if np.any(zooms <= 1e-8) or abs(np.linalg.det(a[:3, :3])) <= 1e-12:
        return f"singular affine (zero spacing: voxel sizes {np.round(zooms, 6).tolist()} mm)"
    return None


def read_nifti(path: str, is_label: bool = False):
    """Load a NIfTI volume, reorient to the closest canonical (RAS) orientation and return
    ``(array (D=z, H=y, W=x), spacing (sz, sy, sx) mm, affine 4x4 of the RAS voxel grid)``.

    Images come as float32 (scaling applied), labels as the stored integers (rounded if float)."""
    import nibabel as nib

    img = _nib_load(path)
    if problem := affine_problem(img.affine):
        raise DatasetError(f"{path}: {problem}")
    try:
        if img.ndim > 3:
            img = img.slicer[..., 0] if img.ndim == 4 else nib.funcs.squeeze_image(img)
        canon = nib.as_closest_canonical(img)
        if is_label:
            data = np.asanyarray(canon.dataobj)
            if data.dtype.kind == "f":
                data = np.asarray(data)
        else:
            data = canon.get_fdata(dtype=np.float32)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"{path}: cannot read NIfTI data ({type(e).__name__}: {e})") from None
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    zooms = np.sqrt((np.asarray(canon.affine)[:3, :3] ** 2).sum(axis=0))   # voxel sizes of the RAS grid
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    arr = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    return arr, spacing, np.asarray(canon.affine, dtype=np.float64)


def to_file_orientation(arr_dhw: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`read_nifti`'s reorientation: a canonical (D=z, H=y, W=x) array -> the voxel order
    (x, y, z axes as stored) of a NIfTI file with ``affine``."""
    import nibabel as nib

    ras = np.transpose(arr_dhw, (2, 1, 0))
    tr = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                         nib.orientations.io_orientation(affine))
    return np.ascontiguousarray(nib.orientations.apply_orientation(ras, tr))


def write_label_nifti(path: str, label_dhw: np.ndarray, source: str) -> None:
    """Save a canonical (D,H,W) label volume on the voxel grid of the NIfTI image ``source`` (same shape,
    voxel order, affine, qform/sform codes), so it overlays and compares voxel-wise with that image and
    its ground truth; uint16, as BHSD's labels."""
    import nibabel as nib

    src = _nib_load(source)
    data = to_file_orientation(np.asarray(label_dhw).astype(np.uint16), src.affine)
    if data.shape != tuple(src.shape[:3]):
        raise ValueError(f"{source}: prediction of shape {data.shape} (file order) does not fit the image "
                         f"{src.shape[:3]}")
    hdr = src.header.copy()
    hdr.set_data_dtype(np.uint16)
    hdr.set_slope_inter(1.0, 0.0)
    out = nib.Nifti1Image(data, src.affine, header=hdr)
    out.set_qform(src.get_qform(), code=int(src.header["qform_code"]))
    out.set_sform(src.get_sform(), code=int(src.header["sform_code"]))
    nib.save(out, path)


# ---------------------------------------------------------------------------------------------
# PNG slices


def read_png(path: str) -> np.ndarray:
    from PIL import Image

    if not os.path.isfile(path):
        raise DatasetError(f"{path}: PNG file not found")
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA", "P", "LA"):
                im = im.convert("L")
            arr = np.asarray(im)
    except Exception as e:
        raise DatasetError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    if arr.ndim != 2:
        raise DatasetError(f"{path}: expected a grey-level 2-D image, got shape {arr.shape}")
    return arr


def prediction_writer(out_dir: str):
    """``save_pred(item, pred)``: a NIfTI image on the grid of the source NIfTI (same shape, voxel order and
    header, so it compares voxel-wise with the input and its label file); a NIfTI in the canonical (RAS)
    grid when only an affine is known; else h5 (key ``prediction``)."""
    os.makedirs(out_dir, exist_ok=True)

    def save(item: dict, pred: np.ndarray) -> None:
        source, affine = item.get("source"), item.get("affine")
        if source is not None:
            write_label_nifti(os.path.join(out_dir, f"{item['name']}.nii.gz"), pred, source)
        elif affine is not None:
            import nibabel as nib
            # (D,H,W) = (z,y,x) in the canonical orientation the loader produced -> (x,y,z) for NIfTI
            img = nib.Nifti1Image(np.ascontiguousarray(pred.transpose(2, 1, 0)).astype(np.uint16), np.asarray(affine))
            nib.save(img, os.path.join(out_dir, f"{item['name']}.nii.gz"))
        else:
            import h5py
            with h5py.File(os.path.join(out_dir, f"{item['name']}.h5"), "w") as f:
                f.create_dataset("prediction", data=pred.astype(np.uint8), compression="gzip")
    return save
