"""Peak resident memory of ``train_3d.py`` and of ``predict.py`` on a 3D checkpoint as the number of slices grows.

    python bench/bench_rss.py --slices 16 64 256 --out /tmp/rss

For each D of ``--slices`` it writes a custom NIfTI dataset (``-dataset custom``: ``imagesTr``/``labelsTr``, two
``imagesUnlabeled`` volumes, CT) whose volumes are the BHSD-format demo phantoms resampled to D slices, then in a
fresh process each (peak RSS read with ``os.wait4``, the process's own ``ru_maxrss``):

- ``train_3d.py`` for ``--iters`` iterations with validation and the final evaluation (whole volumes of D slices,
  every inference mode) at the demo's model (random Hiera-T, 128 px, frozen encoder, CPU);
- ``predict.py`` with the checkpoint of the smallest D on one volume of D slices.

It prints a Markdown table. Run it on an otherwise idle machine for stable numbers (memory, unlike time, barely
depends on the load).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CLASSES = ("EDH", "IPH", "IVH", "SAH", "SDH")


def resampled_dataset(out: str, depth: int, demo: str, labeled: int = 5, unlabeled: int = 2) -> str:
    """A custom NIfTI root with the demo phantoms resampled (nearest) to ``depth`` slices."""
    import nibabel as nib

    root = os.path.join(out, f"custom_{depth}")
    if os.path.isfile(os.path.join(root, "dataset.json")):
        return root
    images = sorted(glob.glob(os.path.join(demo, "label_192", "images", "*.nii.gz")))[:labeled]
    extra = sorted(glob.glob(os.path.join(demo, "unlabel_1980", "**", "*.nii.gz"), recursive=True))[:unlabeled]
    jobs = [(p, os.path.join(demo, "label_192", "ground truths", os.path.basename(p)), "imagesTr", "labelsTr")
            for p in images] + [(p, None, "imagesUnlabeled", None) for p in extra]
    for i, (image, label, idir, ldir) in enumerate(jobs):
        for path, sub, kind in ((image, idir, np.int16), (label, ldir, np.uint16)):
            if path is None:
                continue
            img = nib.load(path)
            data = np.asanyarray(img.dataobj)
            z = np.linspace(0, data.shape[2] - 1, depth).round().astype(int)     # demo files are (x, y, z)
            affine = img.affine.copy()
            affine[:3, 2] *= data.shape[2] / depth
            os.makedirs(os.path.join(root, sub), exist_ok=True)
            nib.save(nib.Nifti1Image(data[:, :, z].astype(kind), affine), os.path.join(root, sub, f"case{i}.nii.gz"))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "CT"}}, f)
    return root


def peak_rss_mb(cmd: list[str], log: str) -> tuple[float, int]:
    """(peak RSS in MB of the process running ``cmd``, its exit status); its output goes to ``log``."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONWARNINGS="ignore"))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024.0, proc.returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--out", required=True)
    p.add_argument("--iters", type=int, default=2)
    opts = p.parse_args(argv)
    from dataset.demo import ensure_demo
    os.makedirs(opts.out, exist_ok=True)
    demo = ensure_demo(os.path.join(opts.out, "demo_bhsd"), "bhsd", seed=0)
    model = ["-sam_ckpt", "none", "-sam_config", "sam2_hiera_t", "-image_size", "128", "-encoder_lr_mult", "0",
             "-device", "cpu", "-num_workers", "0"]
    rows, ckpt = [], None
    for depth in sorted(opts.slices):
        root = resampled_dataset(opts.out, depth, demo)
        logs = os.path.join(opts.out, f"logs_{depth}")
        train, status = peak_rss_mb([sys.executable, os.path.join(ROOT, "train_3d.py"), "-dataset", "custom",
                                     "-data_path", root, *model, "-max_iters", str(opts.iters),
                                     "-val_every", str(opts.iters), "-log_dir", logs, "-exp_name", f"rss{depth}"],
                                    os.path.join(opts.out, f"train_{depth}.log"))
        if status != 0:
            raise SystemExit(f"train_3d.py failed for {depth} slices: see {opts.out}/train_{depth}.log")
        ckpt = ckpt or glob.glob(os.path.join(logs, "*", "checkpoints", "last.pt"))[0]
        pred, status = peak_rss_mb([sys.executable, os.path.join(ROOT, "predict.py"), "-ckpt", ckpt,
                                    "-input", os.path.join(root, "imagesTr", "case0.nii.gz"),
                                    "-out", os.path.join(opts.out, f"pred_{depth}"), "-device", "cpu",
                                    "-overwrite", "1"],
                                   os.path.join(opts.out, f"predict_{depth}.log"))
        if status != 0:
            raise SystemExit(f"predict.py failed for {depth} slices: see {opts.out}/predict_{depth}.log")
        rows.append((depth, train, pred))
        print(f"{depth} slices: train_3d.py {train:.0f} MB, predict.py {pred:.0f} MB", flush=True)
    print("\n| slices per volume | train_3d.py peak RSS (MB) | predict.py peak RSS (MB) |\n|---|---|---|")
    for depth, train, pred in rows:
        print(f"| {depth} | {train:.0f} | {pred:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
