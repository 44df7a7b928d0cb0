"""2D inference on whole volumes: E -> DFE(W=S) -> H -> prompts over the volume's slices -> decoder -> labels.

``predict_volume`` receives the image only; it never sees a label. Inference modes (``-infer``): ``coarse``
(the coarse head's argmax alone), ``boxes`` (unconstrained per-slice boxes of the coarse argmax -> SAM-2
decoder), ``pcsw`` (PCSW prompts -> SAM-2 decoder). In ``boxes`` and ``pcsw`` with ``pcsw.fuse``, the label map is the
argmax of the coarse head and SAM-2 fused (:func:`sam2_train.model.sss_net.fuse_probs`: prompted classes
average the two, the others keep the coarse probability), resized by the protocol's rule; without it, the
argmax of the refined logits alone (background where no class logit is > 0).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sam2_train.model.resize import resize_image
from sam2_train.model.pcsw import PCSWConfig
from sam2_train.model.semi import body_mask
from sam2_train.model.sss_net import (SSSNet, fuse_probs, labels_from_refined, mask_unprompted, prompts_from_probs,
                                     upsample)


@torch.no_grad()
def predict_volume(net: SSSNet, image: np.ndarray, *, device: torch.device, autocast, pcsw: PCSWConfig,
                   infer: str = "pcsw", protocol: str = "ssl4mis", chunk: int = 8) -> np.ndarray:
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
        if infer == "coarse":
            return coarse_to_labels(probs, (h, w), size, protocol).cpu().numpy()
        s = probs.shape[-1]
        prompts = prompts_from_probs(probs[None], size, pcsw, infer == "pcsw", body=body_mask(x, s)[None],
                                     class_conf=net.gates(pcsw))
        refined = []
        for j, f in enumerate(feats):
            i = j * chunk
            sl = slice(i, i + f[0].shape[0])
            p = type(prompts)(boxes=prompts.boxes[sl], points=prompts.points[sl], valid=prompts.valid[sl])
            refined.append(net.refine(f, p).float())
        refined = mask_unprompted(torch.cat(refined), prompts.valid)          # (D,K,s,s)
    if pcsw.fuse:
        return coarse_to_labels(fuse_probs(probs, refined, prompts.valid), (h, w), size, protocol).cpu().numpy()
    return logits_to_labels(refined, (h, w), size, protocol).cpu().numpy()


def coarse_to_labels(probs: torch.Tensor, size: tuple[int, int], model_size: int, protocol: str) -> torch.Tensor:
    """(D,K+1,s,s) coarse (or fused) class probabilities -> (D,H,W) argmax labels at the native ``size``, resized by the
    protocol's rule (``unimatch``: probabilities bilinearly to the native size; ``ssl4mis``: labels at the
    model size, then nearest neighbour)."""
    if protocol == "unimatch":
        return upsample(probs, size).argmax(1)
    labels = upsample(probs, (model_size, model_size)).argmax(1)
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def logits_to_labels(refined: torch.Tensor, size: tuple[int, int], model_size: int, protocol: str) -> torch.Tensor:
    """(D,K,s,s) refined logits -> (D,H,W) labels at the native ``size`` by the protocol's resize rule:
    ``unimatch`` resizes logits bilinearly to the native size; ``ssl4mis`` takes labels at the model size
    (``model_size``) and resizes them with nearest neighbour."""
    if protocol == "unimatch":
        return labels_from_refined(upsample(refined, size))
    labels = labels_from_refined(upsample(refined, (model_size, model_size)))
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
