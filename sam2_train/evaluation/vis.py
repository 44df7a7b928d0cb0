"""PNG overlays of predictions (``-vis 1``): image | prediction | ground truth for a few slices per volume."""
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
