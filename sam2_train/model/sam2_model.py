"""Differentiable SAM-2 forward for slices (2D) and slice sequences (3D), on top of ``sam2.SAM2Base``.

Shapes (S = model image size, h = w = S/4 low-res mask size, B images, K objects, T frames, P points):

- :meth:`SAM2Seg.preprocess`: (B, 1|3, S, S) in [0, 1] -> (B, 3, S, S) ImageNet-normalised.
- :meth:`SAM2Seg.encode`: -> :class:`ImageFeatures` with ``feats`` = [(B,32,S/4,S/4), (B,64,S/8,S/8),
  (B,256,S/16,S/16)] (after the decoder's conv_s0/conv_s1; no ``no_mem_embed``) and ``pos`` = the
  matching (1,256,H_l,W_l) positional encodings (identical for every image, so stored once).
- :meth:`SAM2Seg.decode`: features + (B,K,4) boxes and/or (B,K,P,2) points -> :class:`DecoderOutput`
  with masks (B,K,h,w) logits, ious (B,K), object_scores (B,K) (``multimask=True``: (B,K,3,h,w), (B,K,3)).
- :meth:`SAM2Seg.track`: T frames, prompts on some frames, K objects ->
  :class:`TrackOutput` with masks (T,K,h,w), ious (T,K), object_scores (T,K).
- :class:`SAM2Tracker`: the same tracking, streamed one frame at a time (memory of old frames dropped); each
  object is conditioned on its own prompted frames only (:class:`SAM2GroupTracker` per set of such frames).

No global state; objects are batched as SAM-2's batch dimension (in tracking, the objects that share their
prompted frames; no loops over samples).
Precision: weights stay fp32; wrap calls in ``torch.autocast("cuda", dtype=torch.bfloat16)`` on CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sam2.modeling.sam2_base import NO_OBJ_SCORE, SAM2Base

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageFeatures:
    """Multi-scale image features of N images (N = B images, or T frames of a clip).

    feats: [(N,32,S/4,S/4), (N,64,S/8,S/8), (N,256,S/16,S/16)] -- what ``SAM2Base.forward_image`` gives
        (high-res levels already projected by ``sam_mask_decoder.conv_s0/conv_s1``), without ``no_mem_embed``.
    pos: [(1,256,H_l,W_l)] per level -- sine positional encodings (image independent; expand to N as needed).
    """

    feats: list[torch.Tensor]
    pos: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.feats[-1].shape[0]

    def __len__(self) -> int:
        return self.batch_size

    def select(self, index) -> "ImageFeatures":
        """Features of a subset of images/frames (``index``: int -> a batch of 1, slice, list or index tensor)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return ImageFeatures([f[index] for f in self.feats], list(self.pos))

    def replace(self, feats: Sequence[torch.Tensor]) -> "ImageFeatures":
        """Same positional encodings, new (e.g. DFE-enhanced) features of identical shapes."""
        return ImageFeatures(list(feats), list(self.pos))

    def detach(self) -> "ImageFeatures":
        return ImageFeatures([f.detach() for f in self.feats], [p.detach() for p in self.pos])


@dataclass
class DecoderOutput:
    """Mask decoder output for B images x K objects (M = 3 candidates when ``multimask``).

    masks: (B,K,S/4,S/4) low-res mask logits ((B,K,M,S/4,S/4) with multimask).
    ious: (B,K) predicted IoU ((B,K,M) with multimask).
    object_scores: (B,K) object-presence logits.
    """

    masks: torch.Tensor
    ious: torch.Tensor
    object_scores: torch.Tensor


@dataclass
class TrackOutput:
    """Per-frame outputs of tracking K objects through T frames.

    masks: (T,K,S/4,S/4) low-res mask logits (SAM-2 sets them to -1024 where object_scores <= 0; frames not
        tracked -- only possible with ``direction`` forward/reverse -- are -1024 too).
    ious: (T,K) predicted IoU of the chosen mask.
    object_scores: (T,K) object-presence logits (-1024 on frames not tracked).
    prompt_frames: (T,) bool, frames used as conditioning (prompted) frames.
    """

    masks: torch.Tensor
    ious: torch.Tensor
    object_scores: torch.Tensor
    prompt_frames: torch.Tensor


def upsample_logits(logits: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Bilinearly resize mask logits (..., h, w) -> (..., H, W) (as SAM-2 does: ``align_corners=False``)."""
    if isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if tuple(logits.shape[-2:]) == size:
        return logits
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:]).float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.reshape(*lead, *size)


def _flat_hw(x: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) -> (H*W,N,C), SAM-2's sequence layout."""
    return x.flatten(2).permute(2, 0, 1)


class SAM2Seg(nn.Module):
    """SAM-2 wrapper with a differentiable image and slice-sequence forward.

    Args:
        sam: a ``SAM2Base`` (e.g. from :func:`sam2_train.model.build.build_sam2_base`), stored as ``self.sam``.
    """

    def __init__(self, sam: SAM2Base):
        super().__init__()
        self.sam = sam
        # non-persistent: the state dict stays that of SAM-2 (prefixed "sam.")
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ properties
    @property
    def image_size(self) -> int:
        return int(self.sam.image_size)

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits (S/4)."""
        return int(self.sam.image_size) // 4

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ image encoder
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B,1|3,S,S) float in [0,1] -> (B,3,S,S) ImageNet-normalised (grey channel repeated)."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (B,1|3,S,S), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}")
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.pixel_mean) / self.pixel_std

    def backbone_normalized(self, x: torch.Tensor) -> ImageFeatures:
        """Hiera trunk + FPN neck on already-normalised images (B,3,S,S): the raw FPN levels
        [(B,256,S/4,S/4), (B,256,S/8,S/8), (B,256,S/16,S/16)], *before* the mask decoder's conv_s0/conv_s1
        (:meth:`project`). These depend on the image encoder's weights only."""
        backbone_out = self.sam.image_encoder(x)
        n = self.sam.num_feature_levels
        feats = list(backbone_out["backbone_fpn"][-n:])
        pos = [p[:1].clone() for p in backbone_out["vision_pos_enc"][-n:]]
        return ImageFeatures(feats, pos)

    def project(self, raw: ImageFeatures) -> ImageFeatures:
        """The mask decoder's conv_s0/conv_s1 on levels 0 and 1 of :meth:`backbone_normalized` features, as
        ``SAM2Base.forward_image`` applies them (SAM-2's configs have as many FPN levels as feature levels).
        Those two convolutions are decoder parameters: they train even when the image encoder is frozen."""
        if not self.sam.use_high_res_features_in_sam:
            return raw
        dec = self.sam.sam_mask_decoder
        feats = list(raw.feats)
        feats[0], feats[1] = dec.conv_s0(feats[0]), dec.conv_s1(feats[1])
        return raw.replace(feats)

    def encode_normalized(self, x: torch.Tensor) -> ImageFeatures:
        """Image encoder on already-normalised images (B,3,S,S) -> :class:`ImageFeatures`
        (``SAM2Base.forward_image``: :meth:`backbone_normalized`, then :meth:`project`)."""
        return self.project(self.backbone_normalized(x))

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        """(B,1|3,S,S) in [0,1] -> :class:`ImageFeatures` (see module docstring for shapes)."""
        return self.encode_normalized(self.preprocess(images))

    def backbone(self, images: torch.Tensor) -> ImageFeatures:
        """(B,1|3,S,S) in [0,1] -> the raw FPN levels before conv_s0/conv_s1 (:meth:`backbone_normalized`)."""
        return self.backbone_normalized(self.preprocess(images))

    def _as_features(self, feats) -> ImageFeatures:
        if isinstance(feats, ImageFeatures):
            return feats
        feats = list(feats)
        pe = self.sam.image_encoder.neck.position_encoding
        pos = [pe(f[:1]).to(f.dtype) for f in feats]
        return ImageFeatures(feats, pos)

    # ------------------------------------------------------------------ prompts
    @staticmethod
    def _prompt_points(boxes, box_valid, points, point_labels, lead: tuple[int, ...], device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate box corners (labels 2/3, first) and points -> coords (*lead,P',2), labels (*lead,P')."""
        coords, labels = [], []
        if boxes is not None:
            if tuple(boxes.shape) != (*lead, 4):
                raise ValueError(f"boxes must have shape {(*lead, 4)}, got {tuple(boxes.shape)}")
            c = boxes.float().reshape(*lead, 2, 2)
            lab = torch.tensor([2, 3], dtype=torch.int32, device=device).expand(*lead, 2)
            if box_valid is not None:
                lab = torch.where(box_valid.bool()[..., None], lab, torch.full_like(lab, -1))
                c = torch.where(box_valid.bool()[..., None, None], c, torch.zeros_like(c))
            coords.append(c)
            labels.append(lab)
        if points is not None:
            if point_labels is None:
                raise ValueError("points need point_labels (1 positive, 0 negative, -1 padding)")
            if tuple(points.shape[:-2]) != lead or points.shape[-1] != 2 or \
                    tuple(point_labels.shape) != tuple(points.shape[:-1]):
                raise ValueError(f"points must be {(*lead, 'P', 2)} with labels {(*lead, 'P')}, got "
                                 f"{tuple(points.shape)} / {tuple(point_labels.shape)}")
            coords.append(points.float())
            labels.append(point_labels.to(torch.int32))
        if not coords:  # no prompt at all: one padding point (SAM-2's own convention)
            coords.append(torch.zeros(*lead, 1, 2, device=device))
            labels.append(torch.full((*lead, 1), -1, dtype=torch.int32, device=device))
        return torch.cat(coords, dim=-2), torch.cat(labels, dim=-1)

    @staticmethod
    def _num_objects(boxes, points, num_objects):
        if boxes is not None:
            return boxes.shape[-2]
        if points is not None:
            return points.shape[-3]
        if num_objects is None:
            raise ValueError("give boxes and/or points, or num_objects for an unprompted decode")
        return int(num_objects)

    # ------------------------------------------------------------------ 2D decoder
    def decode(self, feats: ImageFeatures | Sequence[torch.Tensor], boxes: torch.Tensor | None = None,
               points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
               multimask: bool = False, box_valid: torch.Tensor | None = None,
               num_objects: int | None = None) -> DecoderOutput:
        """Prompt encoder + mask decoder for B images x K objects in one call (no memory).

        Args:
            feats: :class:`ImageFeatures` of B images (or the list of 3 levels, e.g. after DFE).
            boxes: (B,K,4) xyxy in model-input pixels (0..S); with ``box_valid`` (B,K) bool, invalid boxes
                become padding.
            points: (B,K,P,2) xy model-input pixel indices (SAM-2's prompt encoder adds 0.5 to reach the pixel
                centre), with ``point_labels`` (B,K,P) (1 pos, 0 neg, -1 pad).
            multimask: return SAM's 3 candidate masks instead of the single-mask output.
            num_objects: K when neither boxes nor points are given (unprompted decode).
        Returns:
            :class:`DecoderOutput` (masks (B,K,S/4,S/4), ious (B,K), object_scores (B,K); multimask adds an
            M=3 axis after K). Mask logits are the raw decoder output (not set to -1024 for absent objects).
        """
        f = self._as_features(feats)
        B = f.batch_size
        K = self._num_objects(boxes, points, num_objects)
        coords, labels = self._prompt_points(boxes, box_valid, points, point_labels, (B, K), f.feats[-1].device)
        coords = coords.flatten(0, 1)  # (B*K, P', 2)
        labels = labels.flatten(0, 1)  # (B*K, P')

        top = f.feats[-1]
        if self.sam.directly_add_no_mem_embed:  # image (no-memory) case, as SAM2ImagePredictor does
            top = top + self.sam.no_mem_embed.view(1, -1, 1, 1)
        image_embed = top.repeat_interleave(K, dim=0)  # (B*K,256,S/16,S/16)
        high_res = [x.repeat_interleave(K, dim=0) for x in f.feats[:-1]]  # (B*K,32,S/4,S/4), (B*K,64,S/8,S/8)

        sparse, dense = self.sam.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        masks, ious, _, obj = self.sam.sam_mask_decoder(
            image_embeddings=image_embed,
            image_pe=self.sam.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=False,
            high_res_features=high_res if self.sam.use_high_res_features_in_sam else None,
        )
        h, w = masks.shape[-2:]
        masks = masks.float().view(B, K, -1, h, w)
        ious = ious.float().view(B, K, -1)
        if not multimask:
            masks, ious = masks[:, :, 0], ious[:, :, 0]
        return DecoderOutput(masks=masks, ious=ious, object_scores=obj.float().view(B, K))

    def forward(self, images: torch.Tensor, boxes: torch.Tensor | None = None,
                points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None,
                multimask: bool = False, box_valid: torch.Tensor | None = None) -> DecoderOutput:
        """2D forward: images (B,1|3,S,S) in [0,1] + prompts (see :meth:`decode`) -> :class:`DecoderOutput`."""
        return self.decode(self.encode(images), boxes=boxes, points=points, point_labels=point_labels,
                           multimask=multimask, box_valid=box_valid)

    upsample_logits = staticmethod(upsample_logits)

    # ------------------------------------------------------------------ 3D (slice sequence)
    def tracker(self, prompted: torch.Tensor, memory_dtype: torch.dtype | None = None,
                prune: bool = True) -> "SAM2Tracker":
        """A streaming :class:`SAM2Tracker` over a volume; ``prompted`` (D,K) bool: the frames each object
        gets a prompt on (its conditioning frames)."""
        return SAM2Tracker(self, prompted, memory_dtype=memory_dtype, prune=prune)

    def track(self, feats: ImageFeatures | Sequence[torch.Tensor], boxes: torch.Tensor | None = None,
              box_valid: torch.Tensor | None = None, points: torch.Tensor | None = None,
              point_labels: torch.Tensor | None = None, *, start_frame: int | None = None,
              direction: Literal["both", "forward", "reverse"] = "both",
              memory_dtype: torch.dtype | None = None) -> TrackOutput:
        """Differentiable SAM-2 tracking of K objects through the T frames whose features are given.

        An object's prompted frames (a valid box or a non-padding point for it there) are its conditioning
        frames, decoded first without memory (as ``SAM2VideoPredictor`` does with prompts added before
        propagation; one batched call per group of objects with the same prompted frames, see
        :class:`SAM2Tracker`); every other frame of the object is tracked from its memory, forwards from
        ``start_frame`` (default: the first prompted frame of any object) to T-1 and/or backwards to 0. The
        backward pass of "both" starts from the conditioning frames only (forward-tracked memories are
        cleared, so the result does not depend on memory pruning; SAM2VideoPredictor would reuse them).
        Objects without any prompt are not tracked (masks and object scores ``NO_OBJ_SCORE``).

        Args:
            feats: :class:`ImageFeatures` of the T frames (batch dim = T), encoded in one batched call.
            boxes: (T,K,4) xyxy in model-input pixels, ``box_valid`` (T,K) bool (default: all valid).
            points: (T,K,P,2) xy, ``point_labels`` (T,K,P) (1 pos, 0 neg, -1 padding).
            start_frame: first frame to track from (default: first prompted frame).
            direction: "both" (forward then backward, every frame gets an output), "forward" or "reverse".
            memory_dtype: storage dtype of spatial memories (None: keep; bf16 saves memory in evaluation).
        Returns:
            :class:`TrackOutput` (masks (T,K,S/4,S/4), ious (T,K), object_scores (T,K), prompt_frames (T,)).
        """
        f = self._as_features(feats)
        T = f.batch_size
        K = self._num_objects(boxes, points, None)
        dev = f.feats[-1].device
        prompted = torch.zeros(T, K, dtype=torch.bool, device=dev)                     # (T,K)
        if boxes is not None:
            bv = box_valid.bool() if box_valid is not None else torch.ones(T, K, dtype=torch.bool, device=dev)
            prompted |= bv
        if points is not None:
            prompted |= (point_labels >= 0).any(dim=-1)
        tr = SAM2Tracker(self, prompted, memory_dtype=memory_dtype)                    # one host sync per clip
        prompt_idx = tr.prompt_frames
        if not prompt_idx:
            raise ValueError("track needs at least one prompted frame (a valid box or point for some object)")
        sel = torch.tensor(prompt_idx, device=dev)
        tr.add_prompts(
            prompt_idx, f.select(sel),
            boxes=None if boxes is None else boxes[sel],
            box_valid=None if boxes is None else bv[sel],
            points=None if points is None else points[sel],
            point_labels=None if points is None else point_labels[sel])

        start = prompt_idx[0] if start_frame is None else int(start_frame)
        orders = {"both": [range(start, T), range(start - 1, -1, -1)], "forward": [range(start, T)],
                  "reverse": [range(start, -1, -1)]}[direction]
        per_frame: dict[int, FrameOutput] = {}
        for i, order in enumerate(orders):
            reverse = direction == "reverse" or i == 1
            if i:  # the backward pass starts from the prompts only (not from forward-tracked memories)
                tr.clear_non_cond()
            for t in order:
                per_frame[t] = tr.step(t, lambda t=t: f.select(t), reverse=reverse)

        h = self.low_res_size
        ref = f.feats[-1]
        fill = FrameOutput(ref.new_full((1, K, h, h), NO_OBJ_SCORE, dtype=torch.float32),
                           ref.new_zeros((1, K), dtype=torch.float32),
                           ref.new_full((1, K), NO_OBJ_SCORE, dtype=torch.float32))
        outs = [per_frame.get(t, fill) for t in range(T)]
        masks = torch.cat([o.masks for o in outs])
        ious = torch.cat([o.ious for o in outs])
        scores = torch.cat([o.object_scores for o in outs])
        is_prompt = prompted.any(dim=1)
        return TrackOutput(masks=masks, ious=ious, object_scores=scores, prompt_frames=is_prompt)



@dataclass
class FrameOutput:
    """Outputs for n frames x K objects: masks (n,K,S/4,S/4), ious (n,K), object_scores (n,K)."""

    masks: torch.Tensor
    ious: torch.Tensor
    object_scores: torch.Tensor


class SAM2GroupTracker:
    """SAM-2 memory state of K objects that share their conditioning frames, fed one frame at a time.

    This is one SAM-2 batch (the K objects are its batch dimension); :class:`SAM2Tracker` runs one of these
    per group of objects with the same prompted frames.

    Usage (the same calls as :class:`SAM2Tracker`, for objects prompted on the same frames)::

        tr = SAM2GroupTracker(model, num_frames=D, num_objects=K)
        tr.add_prompts(frame_ids, feats_of_those_frames, boxes=..., box_valid=...)   # conditioning frames
        for t in range(start, D):                        # forwards
            out = tr.step(t, model.encode(vol[t:t+1]))   # FrameOutput with n = 1
        tr.clear_non_cond()                              # backward pass from the prompts only
        for t in range(start - 1, -1, -1):               # then backwards
            out = tr.step(t, model.encode(vol[t:t+1]), reverse=True)

    Only memories SAM-2 can still read are kept: non-conditioning frames farther than
    ``num_maskmem * stride`` frames from the current one lose their spatial memory, and are dropped once
    farther than ``max_obj_ptrs_in_encoder`` (their object pointer is tiny); conditioning frames are kept
    (pruning is exact within one tracking direction; call :meth:`clear_non_cond` before changing direction)
    and ``++model.max_cond_frames_in_attn`` limits how many are attended. Everything stays differentiable.
    The object-level batch is the SAM-2 batch dimension; prompted frames are decoded without memory
    (``is_init_cond_frame``), as ``SAM2VideoPredictor`` does for prompts added before propagation.
    """

    def __init__(self, model: SAM2Seg, num_frames: int, num_objects: int,
                 memory_dtype: torch.dtype | None = None, prune: bool = True):
        self.model = model
        self.sam: SAM2Base = model.sam
        self.num_frames = int(num_frames)
        self.num_objects = int(num_objects)
        self.memory_dtype = memory_dtype
        self.prune = prune
        # caller-owned SAM-2 output dict: {frame_idx: {"maskmem_features", "maskmem_pos_enc", "obj_ptr", ...}}
        self.output_dict: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self._cond_results: dict[int, FrameOutput] = {}
        self._maskmem_pos_enc: list[torch.Tensor] | None = None
        stride = 1 if self.sam.training else max(1, int(self.sam.memory_temporal_stride_for_eval))
        self.mem_window = int(self.sam.num_maskmem) * stride  # farthest frame whose spatial memory is read
        self.ptr_window = (int(self.sam.max_obj_ptrs_in_encoder) if self.sam.use_obj_ptrs_in_encoder else 0)

    # ---------------------------------------------------------------- helpers
    def _frame_inputs(self, feats: ImageFeatures, reps: int):
        """Features of n frames (batch n) -> SAM-2 sequence layout for a batch of n*reps (frame-major)."""
        n = feats.batch_size

        def rep(x: torch.Tensor) -> torch.Tensor:  # (n,C,H,W) -> (n*reps,C,H,W)
            if reps == 1:
                return x
            if n == 1:
                return x.expand(reps, -1, -1, -1)
            return x.unsqueeze(1).expand(n, reps, *x.shape[1:]).reshape(n * reps, *x.shape[1:])

        vision = [_flat_hw(rep(x)) for x in feats.feats]
        pos = [_flat_hw(p.to(feats.feats[-1].dtype).expand(n * reps, -1, -1, -1)) for p in feats.pos]
        sizes = [(x.shape[-2], x.shape[-1]) for x in feats.feats]
        return vision, pos, sizes

    def _shared_pos(self, maskmem_pos_enc: list[torch.Tensor]) -> list[torch.Tensor]:
        # the memory positional encoding is the same for every frame and object: keep one copy
        if self._maskmem_pos_enc is None:
            self._maskmem_pos_enc = [x[:1].clone() for x in maskmem_pos_enc]
        return [x.expand(self.num_objects, -1, -1, -1) for x in self._maskmem_pos_enc]

    def _store(self, maskmem: torch.Tensor, pos: list[torch.Tensor], obj_ptr: torch.Tensor) -> dict:
        if self.memory_dtype is not None:
            maskmem = maskmem.to(self.memory_dtype)
        return {"maskmem_features": maskmem, "maskmem_pos_enc": self._shared_pos(pos), "obj_ptr": obj_ptr}

    def _view(self, frame_idx: int) -> dict:
        """Output dict for SAM-2 at ``frame_idx``: stripped entries are only shown where SAM-2 reads no spatial
        memory."""
        non_cond = {t: e for t, e in self.output_dict["non_cond_frame_outputs"].items()
                    if "maskmem_features" in e or abs(t - frame_idx) > self.mem_window}
        return {"cond_frame_outputs": self.output_dict["cond_frame_outputs"], "non_cond_frame_outputs": non_cond}

    def _prune(self, frame_idx: int) -> None:
        nc = self.output_dict["non_cond_frame_outputs"]
        for t in list(nc):
            d = abs(t - frame_idx)
            if d > max(self.ptr_window, self.mem_window):
                del nc[t]
            elif d > self.mem_window and "maskmem_features" in nc[t]:
                nc[t] = {"obj_ptr": nc[t]["obj_ptr"]}

    def prompt_output(self, frame_idx: int) -> FrameOutput | None:
        """The decoded output of a conditioning frame (None if no prompt was added there)."""
        return self._cond_results.get(int(frame_idx))

    def clear_non_cond(self) -> None:
        """Forget all tracked (non-conditioning) memories, e.g. before a fresh backward pass."""
        self.output_dict["non_cond_frame_outputs"].clear()

    # ---------------------------------------------------------------- prompts
    def add_prompts(self, frame_indices: Sequence[int], feats: ImageFeatures | Sequence[torch.Tensor],
                    boxes: torch.Tensor | None = None, box_valid: torch.Tensor | None = None,
                    points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None
                    ) -> FrameOutput:
        """Decode n prompted frames for K objects in one batched call and store them as conditioning frames.

        Args:
            frame_indices: n frame indices (0..num_frames-1) in the volume.
            feats: :class:`ImageFeatures` of those n frames (batch dim n, same order).
            boxes: (n,K,4) xyxy in model-input pixels; ``box_valid`` (n,K) bool (invalid -> padding prompt).
            points: (n,K,P,2) xy; ``point_labels`` (n,K,P) (1 pos, 0 neg, -1 padding).
        Returns:
            :class:`FrameOutput` with masks (n,K,S/4,S/4), ious (n,K), object_scores (n,K).
        """
        f = self.model._as_features(feats)
        frame_indices = [int(t) for t in frame_indices]
        n, K = len(frame_indices), self.num_objects
        if f.batch_size != n:
            raise ValueError(f"got features of {f.batch_size} frames for {n} frame indices")
        coords, labels = SAM2Seg._prompt_points(boxes, box_valid, points, point_labels, (n, K), f.feats[-1].device)
        point_inputs = {"point_coords": coords.flatten(0, 1), "point_labels": labels.flatten(0, 1)}
        vision, pos, sizes = self._frame_inputs(f, K)
        sam = self.sam
        current_out, sam_outputs, _, _ = sam._track_step(
            frame_idx=frame_indices[0], is_init_cond_frame=True, current_vision_feats=vision,
            current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=point_inputs, mask_inputs=None,
            output_dict=self.output_dict, num_frames=self.num_frames, track_in_reverse=False,
            prev_sam_mask_logits=None)
        _, _, ious, low_res, high_res, obj_ptr, obj_scores = sam_outputs
        sam._encode_memory_in_output(vision, sizes, point_inputs, True, high_res, obj_scores, current_out)
        h, w = low_res.shape[-2:]
        masks = low_res.float().view(n, K, h, w)
        best_iou = ious.float().max(dim=-1).values.view(n, K)
        scores = obj_scores.float().view(n, K)
        maskmem = current_out["maskmem_features"]
        maskmem = maskmem.view(n, K, *maskmem.shape[1:]) if maskmem is not None else None
        obj_ptr = obj_ptr.view(n, K, -1)
        for i, t in enumerate(frame_indices):
            if maskmem is not None:
                entry = self._store(maskmem[i], current_out["maskmem_pos_enc"], obj_ptr[i])
            else:
                entry = {"maskmem_features": None, "maskmem_pos_enc": None, "obj_ptr": obj_ptr[i]}
            self.output_dict["cond_frame_outputs"][t] = entry
            self.output_dict["non_cond_frame_outputs"].pop(t, None)
            self._cond_results[t] = FrameOutput(masks[i:i + 1], best_iou[i:i + 1], scores[i:i + 1])
        return FrameOutput(masks, best_iou, scores)

    # ---------------------------------------------------------------- tracking
    def step(self, frame_idx: int, feats: ImageFeatures | Sequence[torch.Tensor], reverse: bool = False
             ) -> FrameOutput:
        """Track all K objects into frame ``frame_idx`` from memory (n = 1 in the returned FrameOutput).

        ``feats`` are the features of that one frame (batch dim 1). On a conditioning frame the stored
        prompt output is returned. ``reverse``: tracking backwards (memories come from later frames).
        """
        frame_idx = int(frame_idx)
        if frame_idx in self._cond_results:
            return self._cond_results[frame_idx]
        if not self.output_dict["cond_frame_outputs"]:
            raise RuntimeError("add prompts (add_prompts) before tracking: SAM-2 needs a conditioning frame")
        f = self.model._as_features(feats)
        if f.batch_size != 1:
            raise ValueError(f"step takes the features of one frame, got a batch of {f.batch_size}")
        K = self.num_objects
        vision, pos, sizes = self._frame_inputs(f, K)
        sam = self.sam
        current_out, sam_outputs, _, _ = sam._track_step(
            frame_idx=frame_idx, is_init_cond_frame=False, current_vision_feats=vision,
            current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None, mask_inputs=None,
            output_dict=self._view(frame_idx), num_frames=self.num_frames, track_in_reverse=reverse,
            prev_sam_mask_logits=None)
        _, _, ious, low_res, high_res, obj_ptr, obj_scores = sam_outputs
        sam._encode_memory_in_output(vision, sizes, None, True, high_res, obj_scores, current_out)
        if current_out["maskmem_features"] is not None:
            entry = self._store(current_out["maskmem_features"], current_out["maskmem_pos_enc"], obj_ptr)
        else:
            entry = {"maskmem_features": None, "maskmem_pos_enc": None, "obj_ptr": obj_ptr}
        self.output_dict["non_cond_frame_outputs"][frame_idx] = entry
        if self.prune:
            self._prune(frame_idx)
        return FrameOutput(low_res.float().view(1, K, *low_res.shape[-2:]),
                           ious.float().max(dim=-1).values.view(1, K), obj_scores.float().view(1, K))


class SAM2Tracker:
    """SAM-2 memory of K objects over a volume of ``num_frames`` slices, each object with its own prompts.

    As in ``SAM2VideoPredictor`` (sam2 >= 1.1, independent per-object inference), a frame is a conditioning
    frame only for the objects prompted on it: an object without a prompt there is tracked into it from its
    own memory, and its memory bank holds only its own prompted frames as conditioning frames. Objects with
    the same set of prompted frames share one :class:`SAM2GroupTracker` (one SAM-2 batch), so the usual cases
    -- one object, or all objects prompted on the same frames -- run as a single batch; otherwise there is
    one batch per distinct set (at most K). Objects never prompted are not tracked (masks and object scores
    ``NO_OBJ_SCORE``).

    Usage (evaluation streams frames; training uses :meth:`SAM2Seg.track`, which drives this class)::

        tr = model.tracker(prompted)                     # (D,K) bool: where each object gets a prompt
        tr.add_prompts(frame_ids, feats_of_those_frames, boxes=..., box_valid=..., points=..., point_labels=...)
        for t in range(start, D):                        # forwards from the first prompted frame
            out = tr.step(t, lambda: encode(t))          # FrameOutput (1,K,...); features only if needed
        tr.clear_non_cond()                              # backward pass from the prompts only
        for t in range(start - 1, -1, -1):
            out = tr.step(t, lambda: encode(t), reverse=True)
    """

    def __init__(self, model: SAM2Seg, prompted: torch.Tensor, memory_dtype: torch.dtype | None = None,
                 prune: bool = True):
        if prompted.dim() != 2:
            raise ValueError(f"prompted must be (num_frames, num_objects) bool, got shape {tuple(prompted.shape)}")
        self.model = model
        self.num_frames, self.num_objects = int(prompted.shape[0]), int(prompted.shape[1])
        cols = prompted.bool().t().cpu().tolist()                          # one host copy: (K, D) lists
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, col in enumerate(cols):
            frames = tuple(t for t, on in enumerate(col) if on)
            if frames:
                groups.setdefault(frames, []).append(k)
        self.groups = [(set(frames), objs, SAM2GroupTracker(model, self.num_frames, len(objs), memory_dtype, prune))
                       for frames, objs in groups.items()]
        dev = model.device
        self._index = [torch.tensor(objs, device=dev) for _, objs, _ in self.groups]
        self.prompt_frames = sorted(set().union(*(g[0] for g in self.groups))) if self.groups else []

    def add_prompts(self, frame_indices: Sequence[int], feats: ImageFeatures | Sequence[torch.Tensor],
                    boxes: torch.Tensor | None = None, box_valid: torch.Tensor | None = None,
                    points: torch.Tensor | None = None, point_labels: torch.Tensor | None = None) -> None:
        """Decode the prompts of n frames (prompts as in :meth:`SAM2GroupTracker.add_prompts`, (n,K,...)).

        Each group decodes the frames among ``frame_indices`` that are its prompted frames, for its objects,
        in one batched call; prompts of an object on a frame it is not prompted on (per ``prompted``) are
        ignored. The outputs are returned by :meth:`step` on those frames.
        """
        f = self.model._as_features(feats)
        frame_indices = [int(t) for t in frame_indices]
        for (frames, _, tr), objs in zip(self.groups, self._index):
            rows = [i for i, t in enumerate(frame_indices) if t in frames]
            if not rows:
                continue
            r = torch.tensor(rows, device=objs.device)
            pick = (lambda x: None if x is None else x[r][:, objs])
            tr.add_prompts([frame_indices[i] for i in rows], f.select(r), boxes=pick(boxes),
                           box_valid=pick(box_valid), points=pick(points), point_labels=pick(point_labels))

    def step(self, frame_idx: int, feats, reverse: bool = False) -> FrameOutput:
        """Outputs of all K objects on ``frame_idx`` (n = 1): stored prompt outputs for the groups prompted
        there, tracking from memory for the others. ``feats``: the frame's features (batch 1), or a
        zero-argument callable returning them, called only if some group needs them."""
        frame_idx = int(frame_idx)
        h = self.model.low_res_size
        outs = []
        for frames, objs, tr in self.groups:
            if frame_idx in frames:
                out = tr.prompt_output(frame_idx)
                if out is None:
                    raise RuntimeError(f"frame {frame_idx} is a prompted frame of objects {objs}: add_prompts first")
                outs.append(out)
                continue
            if callable(feats):
                feats = feats()
            outs.append(tr.step(frame_idx, feats, reverse))
        if len(outs) == 1 and len(self.groups[0][1]) == self.num_objects:
            return outs[0]
        ref = outs[0].masks if outs else torch.empty(0, device=self.model.device)
        masks = ref.new_full((1, self.num_objects, h, h), NO_OBJ_SCORE)
        ious = ref.new_zeros((1, self.num_objects))
        scores = ref.new_full((1, self.num_objects), NO_OBJ_SCORE)
        for out, objs in zip(outs, self._index):
            masks = masks.index_copy(1, objs, out.masks)
            ious = ious.index_copy(1, objs, out.ious)
            scores = scores.index_copy(1, objs, out.object_scores)
        return FrameOutput(masks, ious, scores)

    def clear_non_cond(self) -> None:
        """Forget all tracked (non-conditioning) memories of every group, e.g. before the backward pass."""
        for _, _, tr in self.groups:
            tr.clear_non_cond()
