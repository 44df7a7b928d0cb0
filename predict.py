"""Segment scans without labels with a trained checkpoint.

    python predict.py -ckpt logs/BHSD_SSS_.../checkpoints/best.pt -input scans/ -out predictions/
    python predict.py -ckpt logs/ACDC_SSS_.../checkpoints/best.pt -input patient101_frame01.h5 -out pred/ -overlay 1

``-input`` is one file or a folder: NIfTI volumes (``.nii``/``.nii.gz``), ACDC-format ``.h5`` volumes (key
``image``, (D,H,W) in [0,1]), or folders of PNG slices (one folder = one case, slices sorted by the last
number in the file name; the input folder itself when it holds PNG files). No label is read.

The network, classes, image size, intensity mapping (CT window for CT checkpoints) and inference mode come
from the checkpoint's config alone; the prediction is the label-free predictor of ``evaluate.py``
(:func:`sam2_train.evaluation.checkpoint_model.load_model`): 2D checkpoints segment slice by slice, 3D
checkpoints stream the volume through SAM-2's memory bank. Writes into ``-out``:

* ``<case>.nii.gz`` for NIfTI input: uint16 label map on the input's own voxel grid and header (shape, voxel
  order, affine, qform/sform codes), so it overlays on the scan in ITK-SNAP or 3D Slicer;
* ``<case>.h5`` (dataset ``prediction``, uint8 (D,H,W)) for h5 input;
* ``<case>/<slice file name>`` for PNG input: 8-bit masks holding class indices (0 background, 1..K);
* ``volumes.csv``: one row per case and class (see :func:`class_volumes`);
* ``overlays/<case>.png`` with ``-overlay 1``: a montage of the slices with the most predicted foreground.

Output names come from each case's own file or folder name (``-input ..`` names its case after the folder
``..`` is), so every output lies inside ``-out``; a case whose output would resolve outside it (e.g. through a
symbolic link) or that cannot be named (an empty file stem: ``.h5``, ``...h5``) is refused. A case that cannot
be read, segmented or written is reported in one line naming the file and the reason and skipped (outputs it
had begun to write are removed); the others go on and ``volumes.csv`` holds the cases that worked. The exit
status is 1 when any case failed, 2 for a usage error found before any case is run (bad checkpoint, no input,
an ``-out`` that is not writable, outputs that exist without ``-overwrite 1``).
"""
from __future__ import annotations

import contextlib
import csv
import os
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from dataset import DatasetError
from dataset import io as dio
from dataset.custom import slice_key
from sam2_train.engine.errors import USER_ERRORS
from sam2_train.engine.run_dir import check_writable, console
from sam2_train.engine.settings import OneLineParser, add_device_flags, lower_choice, str2bool
from sam2_train.evaluation.checkpoint_model import load_model

NIFTI_EXTS = (".nii.gz", ".nii")
OVERLAY_DIR = "overlays"
UNNAMEABLE = ("", ".", "..")                    # case names that cannot name an output (e.g. of a file "...h5")
VOLUME_COLUMNS = ("case", "class", "voxels", "volume_ml", "components", "slices", "first_slice", "last_slice")


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One scan to segment: a NIfTI or h5 file, or a folder of PNG slices (``slices`` in order)."""
    name: str
    path: str
    kind: str                                   # "nifti" | "h5" | "png"
    slices: list[str] = field(default_factory=list)


def _case_name(path: str) -> str:
    """The file or folder's own name without its volume extension (``-input ..`` gives the parent folder's
    name, never ``..``)."""
    base = os.path.basename(os.path.abspath(path))
    for ext in (*NIFTI_EXTS, ".h5"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _png_slices(folder: str) -> list[str]:
    files = sorted((f for f in os.listdir(folder) if f.lower().endswith(".png")), key=slice_key)
    return [os.path.join(folder, f) for f in files]


def _file_case(path: str) -> Case | None:
    low = path.lower()
    if low.endswith(NIFTI_EXTS):
        return Case(_case_name(path), path, "nifti")
    if low.endswith(".h5"):
        return Case(_case_name(path), path, "h5")
    return None


def find_cases(path: str) -> list[Case]:
    """The cases under ``path`` (a file, a folder of PNG slices, or a folder of volumes and PNG case folders).

    DatasetError when ``path`` does not exist or holds nothing to segment, or when two inputs would write
    the same output name."""
    if os.path.isfile(path):
        case = _file_case(path)
        if case is None:
            raise DatasetError(f"{path}: not a NIfTI (.nii, .nii.gz) or h5 volume")
        return [case]
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: input not found")
    slices = _png_slices(path)
    if slices:
        return [Case(_case_name(path), path, "png", slices)]
    cases, skipped = [], []
    for entry in sorted(os.listdir(path)):
        full = os.path.join(path, entry)
        if os.path.isfile(full):
            case = _file_case(full)
        elif os.path.isdir(full) and _png_slices(full):
            case = Case(entry, full, "png", _png_slices(full))
        else:
            case = None
        if case is not None:
            cases.append(case)
        elif not entry.startswith("."):
            skipped.append(entry + ("/" if os.path.isdir(full) else ""))
    if skipped:      # said, not silent: a scan in an unexpected format must not vanish from the batch
        print(f"skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} of {path} that are no NIfTI, h5 "
              f"or PNG-slice case: {', '.join(skipped[:5])}" + (" ..." if len(skipped) > 5 else ""), flush=True)
    if not cases:
        raise DatasetError(f"{path}: no NIfTI (.nii, .nii.gz), h5 volumes or folders of PNG slices found")
    seen = {}
    for c in cases:
        if c.name in UNNAMEABLE:         # refused one by one (output_problem)
            continue
        if c.name in seen:
            raise DatasetError(f"{c.path} and {seen[c.name]} would both be written as case {c.name}")
        seen[c.name] = c.path
    return cases


def output_paths(case: Case, out_dir: str, overlay: bool) -> list[str]:
    """The files predict.py writes for ``case`` (see :func:`output_problem` for the names it refuses)."""
    if case.kind == "nifti":
        paths = [os.path.join(out_dir, f"{case.name}.nii.gz")]
    elif case.kind == "h5":
        paths = [os.path.join(out_dir, f"{case.name}.h5")]
    else:
        paths = [os.path.join(out_dir, case.name, os.path.basename(s)) for s in case.slices]
    if overlay:
        paths.append(os.path.join(out_dir, OVERLAY_DIR, f"{case.name}.png"))
    return paths


def _inside(path: str, folder: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real != root and os.path.commonpath([real, root]) == root


def output_problem(case: Case, out_dir: str, overlay: bool) -> str | None:
    """Why ``case`` cannot be written into ``out_dir`` (one line naming its file), or None: its name is empty,
    ``.`` or ``..`` (e.g. a file named ``...h5``), or an output path resolves outside ``out_dir`` (a ``..`` or a
    symbolic link out of it)."""
    if case.name in UNNAMEABLE:
        return (f"{case.path}: cannot name its outputs after the file name (case name {case.name!r}); "
                "rename the file to <case>.h5, <case>.nii.gz or a folder <case>/ of PNG slices")
    for p in output_paths(case, out_dir, overlay):
        if not _inside(p, out_dir):
            return (f"{case.path}: its output {p} resolves to {os.path.realpath(p)}, outside -out "
                    f"{os.path.realpath(out_dir)}; refused")
    return None


def _remove_outputs(case: Case, out_dir: str, overlay: bool) -> None:
    """Remove what a failed case had written (its prediction, masks, overlay), so no partial case is left."""
    for p in output_paths(case, out_dir, overlay):
        with contextlib.suppress(OSError):
            os.remove(p)
    if case.kind == "png":
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(out_dir, case.name))


# ---------------------------------------------------------------------------------------------- reading
def intensity_for_input(intensity: Sequence, kind: str) -> tuple:
    """How to map an input of ``kind`` to [0, 1] the way the checkpoint's training data was mapped
    (``intensity``: its config's ``data.intensity``, the dataset's rule recorded at training time). ACDC-format
    h5 volumes are already in [0, 1]; PNG slices of a CT model are taken as already windowed grey values (/255,
    /65535 for 16 bit); a NIfTI volume for a model trained on [0, 1] images is min-max normalised."""
    if kind == "h5":
        return ("unit",)
    mode = tuple(intensity) or ("minmax",)
    if kind == "png" and mode[0] in ("window", "unit"):
        return ("png_unit",)
    if kind == "nifti" and mode[0] in ("unit", "png_unit"):
        return ("minmax",)
    return mode


def nifti_slice_numbers(path: str, depth: int) -> np.ndarray:
    """(D,) index along the file's own slice axis of each canonical (inferior-to-superior) slice of
    :func:`dataset.io.read_nifti`, so the numbers match what a viewer shows for the file."""
    import nibabel as nib
    ornt = nib.orientations.io_orientation(nib.load(path).affine)
    axis = int(np.argmax(ornt[:, 0] == 2))
    z = np.arange(depth)
    return depth - 1 - z if ornt[axis, 1] < 0 else z


def read_case(case: Case, intensity: tuple, spacing: Sequence[float] | None = None):
    """``(image (D,H,W) float32 in [0,1], spacing (sz,sy,sx) mm or None, slice numbers (D,))``.

    NIfTI volumes are reoriented to the canonical grid as in evaluation; ``spacing`` is used for inputs
    without a header (h5, PNG). DatasetError naming the file for a corrupt file, a wrong dimensionality or
    non-finite values."""
    if case.kind == "nifti":
        image, vox, _ = dio.read_nifti(case.path)
        return dio.normalise(image, intensity, case.path), vox, nifti_slice_numbers(case.path, image.shape[0])
    if case.kind == "h5":
        (image,) = dio.read_h5(case.path, ("image",))
        if image.ndim != 3:
            raise DatasetError(f"{case.path}: expected a 3-D 'image' (D,H,W), got shape {image.shape}")
    else:
        planes = [dio.read_png(p) for p in case.slices]
        shapes = sorted({a.shape for a in planes})
        if len(shapes) > 1:
            raise DatasetError(f"{case.path}: PNG slices differ in size {shapes}; expected one size per case")
        image = np.stack(planes).astype(np.float32)
    image = dio.normalise(image, intensity, case.path)
    return image, (None if spacing is None else tuple(float(s) for s in spacing)), np.arange(image.shape[0])


# ---------------------------------------------------------------------------------------------- outputs
def write_prediction(case: Case, pred: np.ndarray, out_dir: str) -> None:
    """Write the (D,H,W) label map of ``case`` (NIfTI and h5 exactly as ``evaluate.py -save_pred``)."""
    if case.kind == "png":
        from PIL import Image
        folder = os.path.join(out_dir, case.name)
        os.makedirs(folder, exist_ok=True)
        for plane, src in zip(pred.astype(np.uint8), case.slices):
            Image.fromarray(plane).save(os.path.join(folder, os.path.basename(src)), format="PNG")
        return
    dio.prediction_writer(out_dir)({"name": case.name, "source": case.path if case.kind == "nifti" else None}, pred)


def class_volumes(labels: np.ndarray, class_names: Sequence[str], spacing: Sequence[float] | None = None,
                  slice_numbers: Sequence[int] | None = None) -> list[dict]:
    """Per-class figures of a (D,H,W) label map (0 background, k = ``class_names[k-1]``).

    ``voxels``; ``volume_ml`` = voxels x sz*sy*sx mm^3 / 1000 (None without ``spacing``); ``components``:
    3-D connected components (26-connectivity, ``scipy.ndimage.label``); ``slices``: number of slices holding
    the class; ``first_slice``/``last_slice``: smallest and largest of their ``slice_numbers`` (default
    0..D-1), None for an absent class."""
    from scipy import ndimage
    labels = np.asarray(labels)
    numbers = np.arange(labels.shape[0]) if slice_numbers is None else np.asarray(slice_numbers)
    voxel_ml = None if spacing is None else float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(class_names) + 1)
    rows = []
    for k, name in enumerate(class_names, start=1):
        mask = labels == k
        present = numbers[mask.reshape(mask.shape[0], -1).any(1)]
        n = int(counts[k])
        rows.append({"class": name, "voxels": n,
                     "volume_ml": None if voxel_ml is None else n * voxel_ml,
                     "components": int(ndimage.label(mask, structure=np.ones((3, 3, 3)))[1]) if n else 0,
                     "slices": int(present.size),
                     "first_slice": int(present.min()) if present.size else None,
                     "last_slice": int(present.max()) if present.size else None})
    return rows


def write_volumes_csv(path: str, rows: list[dict]) -> None:
    """``volumes.csv`` (atomically); empty cells for unknown values."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=VOLUME_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.4f}" if k == "volume_ml" else r[k]))
                        for k in VOLUME_COLUMNS})
    os.replace(tmp, path)


def save_montage(path: str, image: np.ndarray, pred: np.ndarray, *, slice_numbers: Sequence[int] | None = None,
                 flip_rows: bool = False, max_tiles: int = 16, tile: int = 256, cols: int = 4,
                 class_names: Sequence[str] = ()) -> list[int]:
    """A PNG grid of prediction overlays on up to ``max_tiles`` slices of (D,H,W) ``image``/``pred``: the
    slices with the most predicted foreground (evenly spaced slices when there is none), in slice order,
    each scaled to ``tile`` px on its longer side (small scans are enlarged, pixel for pixel) and labeled with
    its entry of ``slice_numbers`` (default its index, as in volumes.csv), above a legend of the classes'
    colours (``class_names``, label 1 first). ``flip_rows`` puts the last row on top (anterior up for the
    canonical NIfTI grid). Returns the slice indices (into ``pred``) shown."""
    from PIL import Image, ImageDraw

    from sam2_train.evaluation.vis import PALETTE, overlay
    d = pred.shape[0]
    fg = (pred > 0).reshape(d, -1).sum(1)
    if fg.any():
        zs = sorted(z for z in np.argsort(-fg, kind="stable")[:max_tiles].tolist() if fg[z] > 0)
    else:
        zs = sorted(set(np.linspace(0, d - 1, min(d, max_tiles)).round().astype(int).tolist()))
    h, w = pred.shape[1:]
    scale = tile / max(h, w)
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.NEAREST if scale > 1 else Image.BILINEAR     # enlarged: crisp class boundaries
    rows, legend = -(-len(zs) // cols), 22 if class_names else 0
    width = max(min(cols, len(zs)) * tw, 16 + 90 * len(class_names))
    sheet = Image.new("RGB", (width, rows * th + legend))
    for i, z in enumerate(zs):
        rgb = overlay(image[z], pred[z])
        im = Image.fromarray(rgb[::-1] if flip_rows else rgb).resize((tw, th), resample)
        ImageDraw.Draw(im).text((3, 2), str(z if slice_numbers is None else int(slice_numbers[z])),
                                fill=(255, 255, 255))
        sheet.paste(im, ((i % cols) * tw, (i // cols) * th))
    draw = ImageDraw.Draw(sheet)
    for k, name in enumerate(class_names):                       # the legend: one swatch per class
        x, y = 8 + 90 * k, rows * th + 5
        colour = tuple(int(c) for c in PALETTE[1:][k % (len(PALETTE) - 1)])
        draw.rectangle((x, y, x + 12, y + 12), fill=colour)
        draw.text((x + 16, y), str(name)[:11], fill=(255, 255, 255))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sheet.save(path, format="PNG")          # not from the name: a case named "..." has no extension to read
    return zs


# ---------------------------------------------------------------------------------------------- CLI
def _spacing(value: str) -> tuple[float, float, float]:
    import argparse
    try:
        vals = tuple(float(v) for v in value.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3 or not all(np.isfinite(v) and v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected three positive numbers 'SZ,SY,SX' in mm, got {value!r}")
    return vals


def parse(argv=None):
    p = OneLineParser(prog="predict.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-ckpt", required=True, help="checkpoint written by train_2d.py / train_3d.py (best.pt, last.pt)")
    p.add_argument("-input", required=True, help="a NIfTI/h5 file, a folder of PNG slices, or a folder of those")
    p.add_argument("-out", required=True, help="output folder")
    p.add_argument("-infer", type=lower_choice(("coarse", "boxes", "pcsw", "student", "sam_refine")), default=None,
                   help="coarse | boxes | pcsw; lightweight students student | sam_refine (default: the checkpoint's)")
    p.add_argument("-weights", type=lower_choice(("auto", "ema", "model", "student")), default="auto",
                   help="auto: the EMA teacher when the checkpoint has one; model (= student): the trained weights")
    add_device_flags(p)
    p.add_argument("-spacing", type=_spacing, default=None,
                   help="voxel size 'SZ,SY,SX' in mm for inputs without a header (h5, PNG), for volume_ml")
    p.add_argument("-overlay", type=str2bool, nargs="?", const=True, default=False, metavar="{0,1}",
                   help="also write overlays/<case>.png, a montage of the predicted slices")
    p.add_argument("-overwrite", type=str2bool, nargs="?", const=True, default=False, metavar="{0,1}",
                   help="replace outputs that already exist in -out")
    return p.parse_args(argv)


def check_outputs(cases: list[Case], out_dir: str, overlay: bool, overwrite: bool) -> None:
    """DatasetError when an output would replace an input, or exists and ``overwrite`` is off. Cases that
    :func:`output_problem` refuses are left to :func:`predict_cases`, which reports and skips them."""
    inputs = {os.path.realpath(c.path) for c in cases} | {os.path.realpath(s) for c in cases for s in c.slices}
    planned = [p for c in cases if output_problem(c, out_dir, overlay) is None
               for p in output_paths(c, out_dir, overlay)] + [os.path.join(out_dir, "volumes.csv")]
    clash = [p for p in planned if os.path.realpath(p) in inputs]
    if clash:
        raise DatasetError(f"{clash[0]}: the output would replace an input; choose another -out")
    existing = [p for p in planned if os.path.exists(p)]
    if existing and not overwrite:
        raise DatasetError(f"{existing[0]}: output exists ({len(existing)} of the outputs exist); "
                           f"pass -overwrite 1 to replace them or choose another -out")


def predict_cases(cases: list[Case], model, out_dir: str, *, spacing=None, overlay: bool = False,
                  progress: bool = True) -> tuple[list[dict], list[str]]:
    """Segment ``cases`` one at a time with ``model`` (:class:`evaluate.LoadedModel`) and write their outputs.

    Returns (volumes.csv rows of the cases that worked, one error line per failed case). Whatever makes a case
    fail -- a name or output path :func:`output_problem` refuses, a file that cannot be read, an inference that
    fails (e.g. out of memory), an output that cannot be written -- it is reported in one line naming its file
    and the reason, its partial outputs are removed, and the next case runs."""
    from tqdm import tqdm
    predict = model.predictor()
    class_names = list(model.config.data.class_names)
    rows, errors = [], []
    for case in tqdm(cases, desc="predict", unit="case", disable=not progress, dynamic_ncols=True):
        stage = "reading"
        try:
            problem = output_problem(case, out_dir, overlay)
            if problem is not None:
                raise DatasetError(problem)
            image, vox, numbers = read_case(case, intensity_for_input(model.config.data.intensity, case.kind),
                                            spacing)
            stage = "inference"
            pred = np.asarray(predict(image, vox))
            case_rows = [{"case": case.name, **r} for r in class_volumes(pred, class_names, vox, numbers)]
            stage = "writing"
            write_prediction(case, pred, out_dir)
            if overlay:
                save_montage(os.path.join(out_dir, OVERLAY_DIR, f"{case.name}.png"), image, pred,
                             slice_numbers=numbers, flip_rows=case.kind == "nifti", class_names=class_names)
        except Exception as e:  # noqa: BLE001 - one case must never stop the others
            if stage == "writing":
                _remove_outputs(case, out_dir, overlay)
            msg = (str(e) if isinstance(e, DatasetError) and case.path in str(e)
                   else f"{case.path}: {stage} failed ({type(e).__name__}: {str(e) or 'no reason given'})")
            errors.append(" ".join(msg.split()))
            tqdm.write(f"error: {errors[-1]}", file=sys.stderr)
            continue
        rows += case_rows
    return rows, errors


def main(argv=None) -> int:
    opts = parse(argv)
    try:
        check_writable(opts.out, "-out")              # before the input is listed and the model loaded
        cases = find_cases(opts.input)
        check_outputs(cases, opts.out, opts.overlay, opts.overwrite)
        model = load_model(opts.ckpt, weights=opts.weights, device=opts.device, gpu_device=opts.gpu_device,
                           amp=opts.amp, overrides={"infer": {"infer": opts.infer}})
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(opts.out, exist_ok=True)
    c = model.config
    console(f"{len(cases)} case(s); {c.run.script.upper()} model {os.path.abspath(opts.ckpt)} "
            f"({model.weights} weights, -infer {c.infer.infer}, "
            f"classes {', '.join(c.data.class_names)}) on {model.device}")
    rows, errors = predict_cases(cases, model, opts.out, spacing=opts.spacing, overlay=opts.overlay)
    write_volumes_csv(os.path.join(opts.out, "volumes.csv"), rows)
    done = len(cases) - len(errors)
    console(f"wrote {done} of {len(cases)} case(s) to {opts.out}" + (f"; {len(errors)} failed" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
