"""Label-free inference of a lightweight student (``-student unet | unetpp``) on whole volumes, slice by slice."""
from __future__ import annotations

import numpy as np
import torch

from sam2_train.model.resize import logits_to_labels, probs_to_labels, resize_image
from sam2_train.model.sam_guide import SAMGuide, box_point_prompts
from sam2_train.model.students import UNetStudent


@torch.no_grad()
def predict_student(net: UNetStudent, image: np.ndarray, *, config, infer: str, device, autocast,
                    guide: SAMGuide | None = None) -> np.ndarray:
    """Label volume (D,H,W) int64 of an image volume (D,H,W) in [0,1], slice by slice, from the image alone.

    ``infer="student"``: the student's argmax; ``"sam_refine"``: the student's prediction prompts the frozen
    SAM-2 (Knowledge Mining's prompts, ties broken with ``-seed``) and SAM-2's masks are the labels. Labels go
    back to the native size by the protocol's rule (:mod:`sam2_train.model.resize`)."""
    net.eval()
    d, h, w = image.shape
    size, chunk = net.image_size, max(8, config.run.batch_size)
    x = resize_image(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)[:, None], size)
    with autocast():
        probs = torch.cat([net(x[i:i + chunk]).float().softmax(1) for i in range(0, d, chunk)])    # (D,K+1,S,S)
    if infer == "student":
        return probs_to_labels(probs, (h, w), size, config.infer.protocol).cpu().numpy()
    if infer != "sam_refine":
        raise ValueError(f"-infer {infer}: a -student unet/unetpp predicts with student or sam_refine")
    if guide is None:
        raise ValueError("-infer sam_refine needs the frozen SAM-2 of -sam_config/-sam_ckpt")
    ties = torch.Generator().manual_seed(config.run.seed)
    prompts = box_point_prompts(probs, thresh=config.infer.km_thresh, num_points=config.infer.km_points,
                                generator=ties)
    logits = torch.cat([guide.masks(x[i:i + chunk], prompts.select(slice(i, i + chunk)))
                        for i in range(0, d, chunk)])                                              # (D,K,S,S)
    return logits_to_labels(logits, (h, w), size, config.infer.protocol).cpu().numpy()
