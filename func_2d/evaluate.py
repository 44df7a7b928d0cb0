"""2D inference on whole volumes: E -> DFE(W=S) -> H -> PCSW over the volume's slices -> decoder -> labels.

``predict_volume`` receives the image only; it never sees a label.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dataset.transforms import resize_image
from sam2_train.pcsw import PCSWConfig
from sam2_train.sss_net import SSSNet, labels_from_refined, mask_unprompted, prompts_from_probs, upsample

from sam2_train.semi import body_mask


@torch.no_grad()
def predict_volume(net: SSSNet, image: np.ndarray, *, device: torch.device, autocast, cfg: PCSWConfig,
                   use_pcsw: bool, protocol: str = "ssl4mis", chunk: int = 8) -> np.ndarray:
    """Label volume (D,H,W) int64 for an image volume (D,H,W) float in [0,1] at its native size.

    Slices are resized to the model size as in training (``resize_image``: bilinear, antialiased when
    shrinking) and encoded ``chunk`` at a time; PCSW sees the coarse probabilities of all D slices at once
    (its windows run along the slice axis). ``protocol``:
    ``ssl4mis`` takes the argmax at model resolution and resizes the labels back with nearest neighbour;
    ``unimatch`` resizes the logits back bilinearly and takes the argmax there.
    """
    net.eval()
    d, h, w = image.shape
    size = net.image_size
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)[:, None]
    x = resize_image(x, size).clamp(0, 1)                                     # as in training
    feats, probs = [], []
    with autocast():
        for i in range(0, d, chunk):
            f, _ = net.enhance(net.encode(x[i:i + chunk]).feats)
            feats.append(f)
            probs.append(net.coarse(f).float().softmax(1))
        probs = torch.cat(probs)                                              # (D,K+1,s,s)
        s = probs.shape[-1]
        prompts = prompts_from_probs(probs[None], size, cfg, use_pcsw, body=body_mask(x, s)[None])
        refined = []
        for j, f in enumerate(feats):
            i = j * chunk
            sl = slice(i, i + f[0].shape[0])
            p = type(prompts)(boxes=prompts.boxes[sl], points=prompts.points[sl], valid=prompts.valid[sl])
            refined.append(net.refine(f, p).float())
        refined = mask_unprompted(torch.cat(refined), prompts.valid)          # (D,K,s,s)
    return logits_to_labels(refined, (h, w), size, protocol).cpu().numpy()


def logits_to_labels(refined: torch.Tensor, size: tuple[int, int], model_size: int, protocol: str) -> torch.Tensor:
    """(D,K,s,s) refined logits -> (D,H,W) labels at the native ``size`` by the protocol's resize rule:
    ``unimatch`` resizes logits bilinearly to the native size; ``ssl4mis`` takes labels at the model size
    (``model_size``) and resizes them with nearest neighbour."""
    if protocol == "unimatch":
        return labels_from_refined(upsample(refined, size))
    labels = labels_from_refined(upsample(refined, (model_size, model_size)))
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
