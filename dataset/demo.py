"""Demo data: learnable ACDC-format and BHSD-format phantoms, deterministic by seed.

``python -m dataset.demo OUT [--kind acdc|bhsd|both] [--seed S] [--scale F] [--lesion_scale G]``

* ``--kind acdc``: OUT is an ACDC root in the SSL4MIS layout (h5, gzip): 16 patients x 2 frames
  (frame01 = ED, frame02 = ES), 6-10 slices (base -> apex), in-plane 96-160 px; per-volume min-max
  float32 image, uint8 label (1 RV, 2 Myo, 3 LV). Patients 10/2/4 for train/val/test; lists
  ``train_slices.list`` (slices shuffled within a patient, like the real list), ``train.list``,
  ``val.list``, ``test.list``; training slices in ``data/slices/``, all volumes in ``data/``.
* ``--kind bhsd``: OUT is a BHSD root: ``label_192/images`` + ``label_192/ground truths`` (12 volumes,
  two of them the same patient key) and ``unlabel_1980/{anybleed,nobleed}`` (8 volumes). int16 HU images,
  uint16 labels (1 EDH, 2 IPH, 3 IVH, 4 SAH, 5 SDH). The labeled volumes are split 7 train / 1 val / 4 test
  in ``splits/{train,val,test}.txt`` (BHSD's own 50/50 patient split would leave a 12-volume demo with a
  class in a single training volume); :data:`BHSD_DEMO_LABELED` lists their bleeds: every type is in at
  least 3 training volumes (EDH, the hardest to tell from the skull, in 5), the validation volume and 2
  test volumes, and each half has a volume without hemorrhage. Shapes, spacings and orientations (qform,
  qfac -1) come from the 192 real BHSD headers shipped in ``dataset/bhsd_headers.csv``, with the 512 px
  in-plane grid divided by ``--scale`` (default 4 -> 128 px, spacing x 4 so the anatomy keeps its size in
  mm). The bleeds, the ventricles and the fissure are ``--lesion_scale`` (default 3) times wider than real
  ones, so that a randomly initialised model at the demo's 128 px (a 32 x 32 coarse map) can resolve them
  on a CPU in minutes; ``--lesion_scale 1`` gives realistic sizes.
* ``--kind both``: OUT/demo_acdc and OUT/demo_bhsd (the default -data_path of -dataset demo is
  data/demo_acdc for train_2d.py and data/demo_bhsd for train_3d.py).

Generation is atomic: everything is written to a temporary sibling folder that is renamed into place.
"""
from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import shutil
import sys
import time

import numpy as np

from .io import to_file_orientation

DEMO_MARKER = "DEMO.json"
# Real BHSD qform headers (shipped with the repository); see the comment lines at the top of the file.
HEADERS_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bhsd_headers.csv")

ACDC_DEMO = dict(patients=16, train=10, val=2, test=4, slices=(6, 10), size=(96, 160))
BHSD_DEMO = dict(labeled=12, unlabeled=8, scale=4, lesion_scale=3.0, version=3)
# The labeled BHSD demo volumes in order: (split, bleeds). Volumes 0 and 1 share a patient key.
BHSD_DEMO_LABELED = (
    ("train", ("EDH", "IPH", "SAH")), ("train", ("EDH", "IVH", "SDH")), ("train", ()),
    ("train", ("IPH", "IVH", "SAH")), ("train", ("EDH", "SDH", "SAH")), ("train", ("EDH", "IPH", "SDH")),
    ("train", ("EDH", "IVH", "SAH")),
    ("val", ("EDH", "IPH", "IVH", "SAH", "SDH")),
    ("test", ("EDH", "IPH", "SAH")), ("test", ("IVH", "SAH", "SDH")), ("test", ()),
    ("test", ("EDH", "IPH", "IVH", "SDH")),
)


# =============================================================================================
# ACDC phantoms


def _acdc_volume(rng: np.random.Generator, H: int, W: int, D: int, pat: dict, es: bool):
    """One cine-MRI-like short-axis stack: LV blood pool, myocardium ring, RV crescent."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    m = min(H, W)
    img = np.zeros((D, H, W), np.float32)
    lab = np.zeros((D, H, W), np.uint8)
    # body and surroundings (same for all slices, slowly varying)
    by, bx = H / 2 + pat["body_dy"] * m, W / 2 + pat["body_dx"] * m
    body = ((yy - by) / (0.46 * H)) ** 2 + ((xx - bx) / (0.47 * W)) ** 2 <= 1
    cy, cx = H / 2 + pat["dy"] * m, W / 2 + pat["dx"] * m
    ang = pat["angle"]
    ca, sa = np.cos(ang), np.sin(ang)
    contract = 0.78 if es else 1.0
    thick = pat["myo"] * m * (1.25 if es else 1.0)
    for k in range(D):
        t = k / max(D - 1, 1)                             # 0 base -> 1 apex
        r_scale = 1.0 - 0.55 * t ** 1.4
        r_lv = pat["r_lv"] * m * r_scale * contract
        # slight slice-to-slice drift of the centre (the long axis is not perfectly perpendicular)
        ky, kx = cy + pat["drift_y"] * k, cx + pat["drift_x"] * k
        u = (xx - kx) * ca + (yy - ky) * sa
        v = -(xx - kx) * sa + (yy - ky) * ca
        d_lv = np.sqrt((u / 1.0) ** 2 + (v / pat["ecc"]) ** 2)
        lv = d_lv <= r_lv
        myo = (d_lv <= r_lv + thick) & ~lv
        heart = d_lv <= r_lv + thick
        rv = np.zeros_like(lv)
        if t <= pat["rv_extent"]:
            r_rv = (r_lv + thick) * pat["rv_size"] * (1.0 - 0.5 * t)
            cu = -(r_lv + thick) * 0.95
            d_rv = np.sqrt(((u - cu) / 1.25) ** 2 + (v / 0.95) ** 2)
            rv = (d_rv <= r_rv) & (d_lv > r_lv + thick + 0.6) & (u < 0)
        lung = (np.sqrt((u + 0.3 * r_lv) ** 2 + v ** 2) <= (r_lv + thick) * 2.3) & body & ~heart & ~rv
        sl = np.where(body, pat["tissue"], 0.03).astype(np.float32)
        sl = np.where(lung, pat["lung"], sl)
        sl = np.where(myo, pat["myo_int"], sl)
        sl = np.where(lv | rv, pat["blood"] * (0.95 + 0.05 * rng.random()), sl)
        img[k] = sl
        lab[k][rv] = 1
        lab[k][myo] = 2
        lab[k][lv] = 3
    # smooth texture, blur-free partial volume via 3x3 box on the image, coil-like bias field, noise
    pad = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    img = sum(pad[:, i:i + H, j:j + W] for i in range(3) for j in range(3)) / 9.0
    bias = 1.0 + pat["bias"] * ((xx - W / 2) / W + 0.5 * (yy - H / 2) / H)
    img = img * bias[None] + rng.normal(0.0, pat["noise"], img.shape).astype(np.float32)
    img = np.clip(img, 0, None)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
    return img.astype(np.float32), lab


def _acdc_patient_params(rng: np.random.Generator) -> dict:
    return dict(
        dy=rng.uniform(-0.06, 0.06), dx=rng.uniform(-0.04, 0.08), body_dy=rng.uniform(-0.03, 0.03),
        body_dx=rng.uniform(-0.03, 0.03), angle=rng.uniform(-0.5, 0.5) + np.pi * 0.0,
        r_lv=rng.uniform(0.085, 0.12), myo=rng.uniform(0.035, 0.05), ecc=rng.uniform(0.85, 1.15),
        rv_size=rng.uniform(1.05, 1.35), rv_extent=rng.uniform(0.6, 0.9),
        drift_y=rng.uniform(-0.8, 0.8), drift_x=rng.uniform(-0.8, 0.8),
        tissue=rng.uniform(0.38, 0.5), lung=rng.uniform(0.06, 0.14), myo_int=rng.uniform(0.2, 0.28),
        blood=rng.uniform(0.8, 0.95), bias=rng.uniform(-0.25, 0.25), noise=rng.uniform(0.025, 0.05),
    )


def make_acdc(out: str, seed: int = 0, patients: int = ACDC_DEMO["patients"]) -> dict:
    """Write an ACDC-format demo root at ``out`` (must not exist). Returns a summary dict."""
    import h5py

    rng = np.random.default_rng([seed, 1])
    n_train = int(round(patients * ACDC_DEMO["train"] / ACDC_DEMO["patients"]))
    n_val = max(1, int(round(patients * ACDC_DEMO["val"] / ACDC_DEMO["patients"])))
    ids = [f"patient{i:03d}" for i in range(1, patients + 1)]
    perm = [ids[i] for i in rng.permutation(patients)]
    train, val, test = perm[:n_train], sorted(perm[n_train:n_train + n_val]), sorted(perm[n_train + n_val:])
    os.makedirs(os.path.join(out, "data", "slices"))
    slice_lines, vol_count, slice_count = [], 0, 0
    for pid in ids:
        prng = np.random.default_rng([seed, 2, int(pid[7:])])
        pat = _acdc_patient_params(prng)
        H, W = (int(prng.integers(ACDC_DEMO["size"][0] // 2, ACDC_DEMO["size"][1] // 2 + 1)) * 2 for _ in range(2))
        D = int(prng.integers(ACDC_DEMO["slices"][0], ACDC_DEMO["slices"][1] + 1))
        for f, es in (("frame01", False), ("frame02", True)):
            name = f"{pid}_{f}"
            img, lab = _acdc_volume(prng, H, W, D, pat, es)
            with h5py.File(os.path.join(out, "data", name + ".h5"), "w") as h:
                h.create_dataset("image", data=img, compression="gzip")
                h.create_dataset("label", data=lab, compression="gzip")
            vol_count += 1
            if pid in train:
                for k in range(D):
                    with h5py.File(os.path.join(out, "data", "slices", f"{name}_slice_{k + 1}.h5"), "w") as h:
                        h.create_dataset("image", data=img[k], compression="gzip")
                        h.create_dataset("label", data=lab[k], compression="gzip")
                    slice_count += 1
    for pid in train:
        prng = np.random.default_rng([seed, 3, int(pid[7:])])
        for f in ("frame01", "frame02"):
            n = len([1 for fn in os.listdir(os.path.join(out, "data", "slices")) if fn.startswith(f"{pid}_{f}_slice_")])
            slice_lines += [f"{pid}_{f}_slice_{k + 1}" for k in prng.permutation(n)]

    def write(name, lines):
        with open(os.path.join(out, name), "w") as fh:
            fh.write("\n".join(lines) + "\n")

    write("train_slices.list", slice_lines)
    write("train.list", [f"{p}_{f}" for p in train for f in ("frame01", "frame02")])
    write("val.list", [f"{p}_{f}" for p in val for f in ("frame01", "frame02")])
    write("test.list", [f"{p}_{f}" for p in test for f in ("frame01", "frame02")])
    return {"kind": "acdc", "patients": patients, "train": train, "val": val, "test": test,
            "volumes": vol_count, "train_slices": slice_count}


# =============================================================================================
# BHSD phantoms


def load_headers(path: str | None = None) -> list[tuple]:
    """Real BHSD header rows as (Z, px, py, pz, qb, qc, qd, ox, oy, oz), in file order.

    ``path`` (default: the table shipped as ``dataset/bhsd_headers.csv``) is that table (columns nz, px, py,
    pz, quatern_b/c/d, qoffset_x/y/z; ``#`` lines are comments) or a full nibabel header dump with columns
    ``dim``, ``pixdim``, ``quatern_*``, ``qoffset_*``. DatasetError naming the file when it is missing or
    has no rows."""
    from .errors import DatasetError

    path = path or HEADERS_CSV
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: BHSD header table not found")
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(ln for ln in f if not ln.startswith("#")):
            if "dim" in r:
                dim, pix = ast.literal_eval(r["dim"]), ast.literal_eval(r["pixdim"])
                z, px, py, pz = int(dim[3]), float(pix[1]), float(pix[2]), float(pix[3])
            else:
                z, px, py, pz = int(r["nz"]), float(r["px"]), float(r["py"]), float(r["pz"])
            rows.append((z, px, py, pz, float(r["quatern_b"]), float(r["quatern_c"]), float(r["quatern_d"]),
                         float(r["qoffset_x"]), float(r["qoffset_y"]), float(r["qoffset_z"])))
    if not rows:
        raise DatasetError(f"{path}: BHSD header table has no rows")
    return rows


def header_affine(row: tuple, scale: int, nx: int = 512, ny: int = 512):
    """qform affine (qfac -1) of a header row with the in-plane grid divided by ``scale``."""
    import nibabel as nib

    Z, px, py, pz, b, c, d, ox, oy, oz = row
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((nx // scale, ny // scale, Z))
    hdr["pixdim"] = [-1.0, px * scale, py * scale, pz, 0, 0, 0, 0]
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = b, c, d
    hdr["qoffset_x"], hdr["qoffset_y"], hdr["qoffset_z"] = ox, oy, oz
    hdr["qform_code"] = 1
    return hdr.get_qform()


def phantom_grid(row: tuple, scale: int):
    """(qform affine, canonical (D, H, W) shape, canonical spacing (sz, sy, sx) mm) of a phantom with header
    ``row`` and the 512 px in-plane grid divided by ``scale``."""
    import nibabel as nib

    affine = header_affine(row, scale)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    nxyz = (512 // scale, 512 // scale, row[0])
    ornt = nib.orientations.io_orientation(affine)
    ras_shape, ras_zoom = [0, 0, 0], [0.0, 0.0, 0.0]
    for ax in range(3):
        ras_shape[int(ornt[ax, 0])] = nxyz[ax]
        ras_zoom[int(ornt[ax, 0])] = float(zooms[ax])
    return affine, (ras_shape[2], ras_shape[1], ras_shape[0]), (ras_zoom[2], ras_zoom[1], ras_zoom[0])


def _bhsd_volume(rng: np.random.Generator, D: int, H: int, W: int, spacing: tuple, bleeds: list[str],
                 lesion_scale: float = 1.0):
    """Head CT phantom in canonical (D=z inferior->superior, H=y posterior->anterior, W=x) HU.

    ``lesion_scale`` multiplies the in-plane thickness/radius of the bleeds, the ventricles' width and the
    fissure/sulcus width (1 = realistic sizes in mm)."""
    g = float(lesion_scale)
    sz, sy, sx = spacing
    zz = (np.arange(D, dtype=np.float32) * sz)[:, None, None]
    yy = ((np.arange(H, dtype=np.float32) - H / 2 + 0.5) * sy)[None, :, None]
    xx = ((np.arange(W, dtype=np.float32) - W / 2 + 0.5) * sx)[None, None, :]
    extent = D * sz
    # head: ellipsoid-ish cross-section, largest at 40% of the stack height
    t = (zz - 0.1 * extent) / max(extent, 1.0)
    shrink = np.sqrt(np.clip(1.0 - ((t - 0.4) / 0.72) ** 2, 0.09, 1.0))
    ax, ay = rng.uniform(66, 76), rng.uniform(84, 96)         # outer semi-axes (mm)
    cy, cx = rng.uniform(-6, 6), rng.uniform(-4, 4)
    rot = rng.uniform(-0.12, 0.12)
    xr = (xx - cx) * np.cos(rot) + (yy - cy) * np.sin(rot)
    yr = -(xx - cx) * np.sin(rot) + (yy - cy) * np.cos(rot)
    skull_t = rng.uniform(5.0, 8.0)
    rho = np.sqrt((xr / (ax * shrink)) ** 2 + (yr / (ay * shrink)) ** 2)          # 1 on the outer table
    depth = (1.0 - rho) * np.minimum(ax, ay) * shrink                               # mm below the surface
    head = rho <= 1.0
    skull = head & (depth < skull_t)
    brain = head & ~skull
    bdepth = depth - skull_t                                                         # mm below inner table
    hu = np.full((D, H, W), -1000.0, np.float32)
    hu[head] = 30.0                                                                   # scalp default
    hu[skull] = 1100.0 + 300.0 * rng.random()
    # grey/white variation: slightly brighter cortex band
    hu = np.where(brain, np.where(bdepth < 4.0, 38.0, 30.0), hu)
    # lateral ventricles (two ellipsoids), third ventricle; and the interhemispheric fissure
    zc = 0.5 * extent + rng.uniform(-0.05, 0.05) * extent
    vz = np.clip(1.0 - ((zz - zc) / (0.2 * extent + 8.0)) ** 2, 0.0, 1.0)
    vent = np.zeros((D, H, W), bool)
    for side in (-1, 1):
        vx = side * rng.uniform(7, 10) * (1.0 + 0.5 * (g - 1.0))
        v = ((xr - vx) / (5.5 * g * vz + 1e-3)) ** 2 + ((yr - 2.0) / (24.0 * vz + 1e-3)) ** 2 <= 1.0
        vent |= v & (vz > 0.15)
    vent &= brain
    hu = np.where(vent, 6.0, hu)
    fissure = brain & (np.abs(xr) < 0.7 * sx * g) & (np.abs(yr) > 28.0) & ~vent
    hu = np.where(fissure, 10.0, hu)
    lab = np.zeros((D, H, W), np.uint16)

    def zwin(zc, half):
        return np.clip(1.0 - ((zz - zc) / max(half, sz * 0.6)) ** 2, 0.0, 1.0)

    bz_lo, bz_hi = 0.3 * extent, 0.85 * extent
    for kind in bleeds:
        phi = rng.uniform(0, 2 * np.pi)
        ux, uy = np.cos(phi), np.sin(phi)
        z0 = rng.uniform(bz_lo, bz_hi)
        if kind == "EDH":     # lens against the skull: thick centre, thin ends, limited extent
            half_len = rng.uniform(20, 32)
            thick = g * rng.uniform(8, 16) * np.sqrt(zwin(z0, rng.uniform(8, 14)))
            along = -(xr) * uy + (yr) * ux                   # tangential coordinate
            facing = (xr * ux + yr * uy) > 0
            prof = thick * np.clip(1.0 - (along / half_len) ** 2, 0.0, 1.0)
            m = brain & facing & (bdepth < prof)
            code = 1
        elif kind == "SDH":   # crescent along the skull, long and thin, many slices
            width = rng.uniform(90, 160) * np.pi / 180
            ang = np.arctan2(yr, xr)
            dang = np.angle(np.exp(1j * (ang - phi)))
            thick = g * rng.uniform(4, 9) * np.sqrt(zwin(z0, rng.uniform(15, 30)))
            m = brain & (np.abs(dang) < width / 2) & (
                bdepth < thick * np.sqrt(np.clip(np.cos(dang / width * np.pi), 0.0, 1.0)))
            code = 5
        elif kind == "IPH":   # irregular blob in the parenchyma
            r0 = g * rng.uniform(10, 18)
            dist = rng.uniform(18, 35)
            px_, py_ = dist * ux * 0.8, dist * uy
            rr = np.sqrt(((xr - px_) / r0) ** 2 + ((yr - py_) / (r0 * rng.uniform(0.7, 1.3))) ** 2
                         + ((zz - z0) / max(r0, 1.2 * sz)) ** 2)
            wob = 0.15 * np.sin(3 * np.arctan2(yr - py_, xr - px_) + rng.uniform(0, 6))
            m = brain & ~vent & (rr < 1.0 + wob) & (bdepth > 4.0)
            code = 2
        elif kind == "IVH":   # layering blood in the dependent (posterior) part of the ventricles
            level = rng.uniform(-6, 8)
            m = vent & (yr < level)
            if not m.any():
                m = vent & (yr < 10)
            code = 3
        else:                 # SAH: thin blood in the fissure and along a few sulci near the surface
            m = fissure & (zwin(z0, rng.uniform(15, 30)) > 0)
            for _ in range(int(rng.integers(2, 5))):
                a0 = rng.uniform(0, 2 * np.pi)
                ang = np.arctan2(yr, xr)
                dang = np.angle(np.exp(1j * (ang - a0)))
                sul = (np.abs(dang) < rng.uniform(0.15, 0.35)) & (np.abs(bdepth - rng.uniform(3, 8)) < 1.0 * sx * g)
                m |= brain & sul & (zwin(rng.uniform(bz_lo, bz_hi), rng.uniform(8, 20)) > 0)
            code = 4
        m = m & brain
        lo, hi = _BLOOD_HU[kind]
        hu = np.where(m, rng.uniform(lo, hi), hu)
        lab[m] = code
    hu = hu + rng.normal(0.0, 4.0, hu.shape).astype(np.float32) * (hu > -900)
    return np.clip(np.round(hu), -1024, 3071).astype(np.int16), lab


_KINDS = ("EDH", "IPH", "IVH", "SAH", "SDH")
# Acute blood is 50-90 HU; thick clots (EDH, IPH) are densest, blood mixed with CSF (IVH, SAH) least dense.
# EDH stays below the top of the 0-80 HU brain window (at 80 HU it merges into the saturated skull). SDH, the
# other bleed along the skull, is at least 12 HU (3 noise sigmas) darker than any EDH: with ranges that
# touched, a random-init model at 128 px learned one extra-axial class and the other stayed at 0 Dice.
_BLOOD_HU = {"EDH": (68, 78), "IPH": (64, 78), "IVH": (48, 60), "SAH": (52, 64), "SDH": (46, 56)}


def _hex(rng, n):
    return "".join("0123456789abcdef"[int(i)] for i in rng.integers(0, 16, n))


def _save_nifti(path: str, arr_dhw: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    data = to_file_orientation(arr_dhw, affine)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(None, code=0)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def make_bhsd(out: str, seed: int = 0, labeled: int = BHSD_DEMO["labeled"], unlabeled: int = BHSD_DEMO["unlabeled"],
              scale: int = BHSD_DEMO["scale"], headers_csv: str | None = None,
              lesion_scale: float = BHSD_DEMO["lesion_scale"]) -> dict:
    """Write a BHSD-format demo root at ``out`` (must not exist). Returns a summary dict."""
    rng = np.random.default_rng([seed, 11])
    rows = load_headers(headers_csv)
    img_dir = os.path.join(out, "label_192", "images")
    gt_dir = os.path.join(out, "label_192", "ground truths")
    os.makedirs(img_dir)
    os.makedirs(gt_dir)
    names, shapes, counts = [], [], {k: 0 for k in _KINDS}
    # another number of labeled volumes (tests: a few) cycles through the volumes with bleeds, default split
    own_split = labeled == len(BHSD_DEMO_LABELED)
    table = BHSD_DEMO_LABELED if own_split else [e for e in BHSD_DEMO_LABELED if e[1]]
    plan = [table[i % len(table)] for i in range(labeled)]
    keys = [f"ID_{_hex(rng, 8)}" for _ in range(labeled)]
    if labeled >= 2:
        keys[1] = keys[0]                       # one patient with two scans (both in the training half)
    split_of = {}
    for i in range(labeled + unlabeled):
        vrng = np.random.default_rng([seed, 12, i])
        row = rows[int(vrng.integers(0, len(rows)))]
        affine, (D, H, W), spacing = phantom_grid(row, scale)
        if i < labeled:
            bleeds = list(plan[i][1])
        else:
            bleeds = ([] if vrng.random() < 0.4
                      else list(vrng.choice(_KINDS, size=int(vrng.integers(1, 3)), replace=False)))
        hu, lab = _bhsd_volume(vrng, D, H, W, spacing, bleeds, lesion_scale)
        key = keys[i] if i < labeled else f"ID_{_hex(vrng, 8)}"
        name = f"{key}_ID_{_hex(vrng, 10)}.nii.gz"
        if i < labeled:
            _save_nifti(os.path.join(img_dir, name), hu, affine)
            _save_nifti(os.path.join(gt_dir, name), lab.astype(np.uint16), affine)
            for c, k in enumerate(_KINDS, start=1):
                counts[k] += int((lab == c).any())
            names.append(name)
            shapes.append((D, H, W))
            split_of.setdefault(plan[i][0], []).append(name)
        else:
            sub = "anybleed" if bleeds else "nobleed"
            os.makedirs(os.path.join(out, "unlabel_1980", sub), exist_ok=True)
            _save_nifti(os.path.join(out, "unlabel_1980", sub, name), hu, affine)
    if own_split:
        os.makedirs(os.path.join(out, "splits"))
        for part, members in split_of.items():
            with open(os.path.join(out, "splits", f"{part}.txt"), "w") as f:
                f.write(f"# BHSD demo {part} split (dataset/demo.py)\n" + "".join(f"{n}\n" for n in members))
    return {"kind": "bhsd", "version": BHSD_DEMO["version"], "labeled": labeled, "unlabeled": unlabeled,
            "scale": scale, "lesion_scale": lesion_scale,
            "split": {k: len(v) for k, v in split_of.items()} if own_split else None,
            "volumes_with_class": counts, "shapes_dhw": shapes, "names": names}


# =============================================================================================
# atomic creation


def is_complete(root: str) -> bool:
    return os.path.isfile(os.path.join(root, DEMO_MARKER))


def ensure_demo(root: str, kind: str = "acdc", seed: int = 0, **kw) -> str:
    """Generate the demo data at ``root`` unless it is already there (``DEMO.json`` marks a complete
    folder). ``kind``: acdc | bhsd | both (both -> root/demo_acdc and root/demo_bhsd).
    Written to a temporary sibling folder and renamed into place, so an interrupted run leaves no half
    dataset; concurrent callers (e.g. DDP ranks) are safe: the first rename wins."""
    from .errors import DatasetError

    if kind == "both":
        ensure_demo(os.path.join(root, "demo_acdc"), "acdc", seed, **kw)
        ensure_demo(os.path.join(root, "demo_bhsd"), "bhsd", seed, **kw)
        return root
    if kind not in ("acdc", "bhsd"):
        raise ValueError(f"kind must be acdc, bhsd or both, got {kind!r}")
    root = os.path.abspath(root)
    if is_complete(root):
        if kind == "bhsd":  # phantoms of an older generator (realistic lesion sizes, no split) train worse
            with open(os.path.join(root, DEMO_MARKER)) as f:
                info = json.load(f)
            made, version = float(info.get("lesion_scale", 1.0)), int(info.get("version", 1))
            wanted = float(kw.get("lesion_scale", BHSD_DEMO["lesion_scale"]))
            if made != wanted or version != BHSD_DEMO["version"]:
                raise DatasetError(f"{root}: demo phantoms of generator version {version} with lesion_scale "
                                   f"{made:g}; this code makes version {BHSD_DEMO['version']} with lesion_scale "
                                   f"{wanted:g}: remove the folder to regenerate it")
        return root
    if os.path.isdir(root) and os.listdir(root):
        raise DatasetError(f"{root}: folder exists but is not a complete demo dataset (no {DEMO_MARKER}); "
                           f"remove it or point -data_path elsewhere")
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(root)}.tmp-{os.getpid()}-{time.time_ns()}")
    t0 = time.time()
    try:
        info = (make_acdc if kind == "acdc" else make_bhsd)(tmp, seed=seed, **kw)
        info.update(seed=seed, seconds=round(time.time() - t0, 2),
                    generator="python -m dataset.demo (dataset/demo.py)")
        with open(os.path.join(tmp, DEMO_MARKER), "w") as f:
            json.dump(info, f, indent=1)
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        try:
            os.rename(tmp, root)
        except OSError:
            if not is_complete(root):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dataset.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (ACDC/BHSD root; with --kind both the parent of demo_acdc/demo_bhsd)")
    p.add_argument("--kind", choices=("acdc", "bhsd", "both"), default="both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=BHSD_DEMO["scale"],
                   help="BHSD: divide the 512 px in-plane grid by this (1 = full size)")
    p.add_argument("--lesion_scale", type=float, default=BHSD_DEMO["lesion_scale"],
                   help="BHSD: widen bleeds, ventricles and fissure by this factor (1 = realistic sizes in mm)")
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        if a.kind in ("acdc", "both"):
            ensure_demo(a.out if a.kind == "acdc" else os.path.join(a.out, "demo_acdc"), "acdc", a.seed)
        if a.kind in ("bhsd", "both"):
            ensure_demo(a.out if a.kind == "bhsd" else os.path.join(a.out, "demo_bhsd"), "bhsd", a.seed,
                        scale=a.scale, lesion_scale=a.lesion_scale)
    except Exception as e:  # one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"demo data ({a.kind}, seed {a.seed}) ready under {a.out} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
