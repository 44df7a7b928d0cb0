"""Label-free inference of the SAM-2 student on whole volumes: E -> DFE(W=S) -> H -> prompts -> SAM-2 -> labels.

The predictors receive the image only; they never see a label. Inference modes (``-infer``): ``coarse`` (the
coarse head's argmax alone), ``boxes`` (unconstrained per-slice boxes of the coarse argmax -> SAM-2), ``pcsw``
(PCSW prompts -> SAM-2). In ``boxes`` and ``pcsw`` with ``pcsw.fuse`` the label map is the argmax of the coarse
head and SAM-2 fused (:func:`sam2_train.model.labels.fuse_probs`: prompted classes average the two, the others
keep the coarse probability); without it, the argmax of the refined logits alone (background where no class
logit is > 0). Labels go back to the native size by the protocol's rule (:mod:`sam2_train.model.resize`).

* :func:`predict_slices` (2D checkpoints): slice by slice, PCSW over all slices of the volume at once.
* :func:`predict_volume` (3D checkpoints), streamed so that memory does not grow with the number of slices:

  1. pass 1 encodes the slices ``chunk`` at a time and keeps only the coarse class probabilities
     (D,K+1,s,s) (and the body mask); the features are dropped after each chunk;
  2. PCSW over all D slices -> prompts; each class keeps every ``prompt_freq``-th of its PCSW-prompted
     slices, its first one always (:func:`sam2_train.model.prompts.thin_prompt_frames`);
  3. pass 2 streams frames through :class:`sam2_train.model.sam2_model.SAM2Tracker`: the prompt frames are
     re-encoded (``chunk`` at a time) and added as conditioning frames of the classes prompted on them (a class
     not prompted on a prompt frame is tracked into it from its own memory, as in SAM-2's video predictor);
     then frames are tracked forwards from the first prompt frame to the last slice and, after
     ``clear_non_cond``, backwards to slice 0, encoding one frame at a time. The tracker keeps the memories of
     at most ``num_maskmem`` recent frames (plus object pointers and the conditioning frames' memories), so peak
     memory is one chunk of encoder activations + that memory bank + the (D,K+1,s,s) probabilities + the
     (D,H,W) output labels. Each frame's labels are made right away (3D fusion: a class tracked in the volume
     whose SAM-2 object score on the slice is > 0 averages its coarse probability with its tracked mask, the
     rule of the 3D teacher's pseudo-labels) and resized to the native size with nearest neighbour.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from sam2_train.model.labels import NEG, body_mask, fuse_probs, labels_from_refined, mask_unprompted
from sam2_train.model.pcsw import PCSWConfig, image_prompts
from sam2_train.model.prompts import thin_prompt_frames
from sam2_train.model.resize import labels_to_native, logits_to_labels, probs_to_labels, resize_image, upsample
from sam2_train.model.sss_net import SSSNet


@torch.no_grad()
def predict_slices(net: SSSNet, image: np.ndarray, *, device: torch.device, autocast, pcsw: PCSWConfig,
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
            return probs_to_labels(probs, (h, w), size, protocol).cpu().numpy()
        s = probs.shape[-1]
        prompts = image_prompts(probs[None], size, pcsw, infer == "pcsw", body=body_mask(x, s)[None],
                                class_conf=net.gates(pcsw))
        refined = []
        for j, f in enumerate(feats):
            i = j * chunk
            refined.append(net.refine(f, prompts.select(slice(i, i + f[0].shape[0]))).float())
        refined = mask_unprompted(torch.cat(refined), prompts.valid)          # (D,K,s,s)
    if pcsw.fuse:
        return probs_to_labels(fuse_probs(probs, refined, prompts.valid), (h, w), size, protocol).cpu().numpy()
    return logits_to_labels(refined, (h, w), size, protocol).cpu().numpy()


class _Frames:
    """Slices of a native (D,H,W) volume resized to the model size on demand (``resize_image``, as in
    training: bilinear, antialiased when shrinking): ``frames[i:j]``."""

    def __init__(self, image: np.ndarray, size: int, device: torch.device):
        self.x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
        self.size = size

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        x = self.x[index]
        if x.dim() == 2:
            x = x[None]
        x = x[:, None]
        return resize_image(x, self.size).clamp(0, 1)                            # as in training; (n,1,S,S)


def memory_dtype_for(device: torch.device, autocast) -> torch.dtype | None:
    """bf16 spatial memories on CUDA under (bf16) autocast; keep the compute dtype otherwise."""
    if device.type != "cuda":
        return None
    with autocast():
        return torch.bfloat16 if torch.is_autocast_enabled("cuda") else None


@torch.no_grad()
def predict_volume(net: SSSNet, image: np.ndarray, *, device: torch.device, autocast: Callable, pcsw: PCSWConfig,
                   infer: str = "pcsw", prompt_freq: int = 1, chunk: int = 8,
                   memory_dtype: torch.dtype | None = None) -> np.ndarray:
    """Label volume (D,H,W) int64 for an image volume (D,H,W) float in [0,1] at its native size.

    ``infer``: ``coarse`` (the coarse head's argmax per slice, no SAM-2), ``boxes`` (unconstrained coarse
    boxes tracked by SAM-2) or ``pcsw`` (PCSW prompts tracked by SAM-2).
    ``chunk``: frames per encoder call in pass 1 and for the prompt frames. ``memory_dtype``: storage dtype
    of the tracker's spatial memories (None: the compute dtype; see :func:`memory_dtype_for`).
    """
    net.eval()
    d, h, w = image.shape
    size, k = net.image_size, net.num_classes
    frames = _Frames(image, size, device)
    out = torch.zeros(d, h, w, dtype=torch.uint8, device=device)

    def features(index):                                                      # slice or list of frames
        enc = net.encode(frames[index])
        return enc.replace(net.enhance(enc.feats)[0])

    with autocast():
        # pass 1: coarse probabilities of every slice, features dropped chunk by chunk
        probs, body = [], []
        for i in range(0, d, chunk):
            f = features(slice(i, min(d, i + chunk)))
            p = net.coarse(f.feats).float().softmax(1)
            probs.append(p)
            body.append(body_mask(frames[i:i + chunk], p.shape[-1]))
            del f
        probs, body = torch.cat(probs), torch.cat(body)                          # (D,K+1,s,s), (D,s,s)
        if infer == "coarse":
            for i in range(0, d, chunk):  # argmax at model resolution, labels resized by nearest neighbour
                out[i:i + chunk] = probs_to_labels(probs[i:i + chunk], (h, w), size, "ssl4mis").to(torch.uint8)
            return out.long().cpu().numpy()
        prompts = image_prompts(probs[None], size, pcsw, infer == "pcsw", body=body[None],
                                class_conf=net.gates(pcsw))
        valid = thin_prompt_frames(prompts.valid[None], prompt_freq)[0]          # (D,K)
        coarse = probs.half() if pcsw.fuse else None                             # (D,K+1,s,s) for fusion
        del probs, body
        obj_prompted = valid.any(0)                                              # (K,)

        def emit(t: int, logits: torch.Tensor, present: torch.Tensor | None = None) -> None:
            """logits (1,K,s,s); present (1,K): SAM-2's object score > 0 (None: no class tracked)."""
            if coarse is not None:
                tracked = obj_prompted[None] & present if present is not None else torch.zeros_like(obj_prompted[None])
                lab = upsample(fuse_probs(coarse[t:t + 1], logits, tracked), (size, size)).argmax(1)
            else:
                lab = labels_from_refined(mask_unprompted(upsample(logits.float(), (size, size)), obj_prompted))
            out[t] = labels_to_native(lab, (h, w))[0].to(torch.uint8)

        prompt_idx = torch.nonzero(valid.any(1)).flatten().tolist()
        if not prompt_idx:
            if coarse is not None:                                               # nothing to track: coarse only
                for t in range(d):
                    emit(t, torch.full((1, k, *coarse.shape[-2:]), NEG, device=device))
            return out.long().cpu().numpy()
        points = prompts.points                                                  # (D,K,1,2)
        point_labels = torch.where(valid, 1, -1).to(torch.int32)[..., None]      # (D,K,1): thinned frames pad

        # pass 2: prompt frames -> conditioning memories of the classes prompted there; then stream forwards
        # and backwards, encoding a frame only where some class is tracked into it
        tracker = net.sam.tracker(valid, memory_dtype=memory_dtype)
        for i in range(0, len(prompt_idx), chunk):
            ids = prompt_idx[i:i + chunk]
            sel = torch.tensor(ids, device=valid.device)
            tracker.add_prompts(ids, features(ids), boxes=prompts.boxes[sel], box_valid=valid[sel],
                                points=points[sel], point_labels=point_labels[sel])
        start = prompt_idx[0]
        for reverse, order in ((False, range(start, d)), (True, range(start - 1, -1, -1))):
            if reverse:
                tracker.clear_non_cond()
            for t in order:
                frame = tracker.step(t, lambda t=t: features(slice(t, t + 1)), reverse=reverse)
                emit(t, frame.masks, frame.object_scores > 0)
    return out.long().cpu().numpy()
