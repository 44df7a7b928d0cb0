"""Pictures of predictions: PNG overlays (``-vis 1``: image | prediction | ground truth for a few slices per
volume) and the one-picture run summary ``vis/summary.png`` (montage + per-class validation Dice curve)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

# One colour per class (background transparent); cycles for more than 8 classes.
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]], dtype=np.float32)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """image (H,W) in [0,1], labels (H,W) int -> (H,W,3) uint8 with coloured classes blended in."""
    grey = np.repeat((np.clip(image, 0, 1) * 255)[..., None], 3, axis=-1).astype(np.float32)
    colours = PALETTE[1:][(np.maximum(labels, 1) - 1) % (len(PALETTE) - 1)]
    fg = (labels > 0)[..., None]
    return np.where(fg, (1 - alpha) * grey + alpha * colours, grey).astype(np.uint8)


def save_overlays(out_dir: str, item: dict, pred: np.ndarray, max_slices: int = 4) -> list[str]:
    """Write ``<name>_z<k>.png`` (image | prediction | label) for the slices with the most foreground.

    The label is read here only to draw it next to an already computed prediction."""
    os.makedirs(out_dir, exist_ok=True)
    image = np.asarray(item["image"], dtype=np.float32)
    label = np.asarray(item["label"])
    fg = (label > 0).reshape(label.shape[0], -1).sum(1) + (pred > 0).reshape(pred.shape[0], -1).sum(1)
    paths = []
    for z in sorted(np.argsort(-fg)[:max_slices].tolist()):
        panel = np.concatenate([overlay(image[z], np.zeros_like(pred[z])), overlay(image[z], pred[z]),
                                overlay(image[z], label[z])], axis=1)
        path = os.path.join(out_dir, f"{item['name']}_z{z:03d}.png")
        Image.fromarray(panel).save(path)
        paths.append(path)
    return paths


def montage_slices(label: np.ndarray, num_classes: int, max_slices: int) -> list[int]:
    """Slices of a (D,H,W) label volume to draw, in depth order: the slice with the most foreground, the
    largest slice of each class present, then the next-largest foreground slices, up to ``max_slices`` (the
    middle slice of a volume without foreground). Drawing only; never used by inference."""
    per_class = np.stack([(label == c).reshape(label.shape[0], -1).sum(1) for c in range(1, num_classes + 1)])
    total = per_class.sum(0)
    if total.max() == 0:
        return [label.shape[0] // 2]
    by_size = [z for z in np.argsort(-total, kind="stable").tolist() if total[z] > 0]
    picks = [by_size[0], *[int(per_class[c].argmax()) for c in range(num_classes) if per_class[c].max() > 0], *by_size]
    return sorted(list(dict.fromkeys(picks))[:max_slices])


def save_summary(path: str, panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], curves: list[dict],
                 class_names: list[str], title: str = "") -> str:
    """One picture of a run: a montage of ``panels`` (name, image (H,W) in [0,1], prediction (H,W), label
    (H,W)), one row each as image | prediction | ground truth, beside the per-class validation Dice curve
    read from ``metrics.csv`` rows ``curves`` (``iteration``, ``dice_<class>``, ``dice_mean``). Returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = max(1, len(panels))
    fig = plt.figure(figsize=(13, max(3.2, 2.4 * rows)), dpi=100)
    grid = fig.add_gridspec(rows, 5, width_ratios=[1, 1, 1, 0.15, 2.4])
    for r, (name, image, pred, label) in enumerate(panels):
        for col, (pic, head) in enumerate(((np.zeros_like(pred), "image"), (pred, "prediction"),
                                            (label, "ground truth"))):
            ax = fig.add_subplot(grid[r, col])
            ax.imshow(overlay(image, pic))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(head, fontsize=10)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    ax = fig.add_subplot(grid[:, 4])
    its = [float(c["iteration"]) for c in curves]
    for k, cname in enumerate([*class_names, "mean"]):
        ys = [float(c.get(f"dice_{cname}") or "nan") * 100 for c in curves]
        colour = PALETTE[1:][k % (len(PALETTE) - 1)] / 255 if cname != "mean" else "black"
        ax.plot(its, ys, marker="o", ms=3, color=colour, lw=2.2 if cname == "mean" else 1.4, label=cname)
    ax.set_xlabel("iteration"), ax.set_ylabel("validation Dice (%)"), ax.set_ylim(0, 100)
    ax.grid(alpha=0.3), ax.legend(fontsize=8, loc="lower right")
    ax.set_title("per-class validation Dice", fontsize=10)
    fig.legend(handles=[Patch(color=PALETTE[1:][k % (len(PALETTE) - 1)] / 255, label=c)
                        for k, c in enumerate(class_names)], loc="lower left", ncol=len(class_names), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
