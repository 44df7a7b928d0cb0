"""SAM-2 build, wrapper, tracker and prompt helpers (CPU, 64-px images, tiny random-init model).

Parity tolerances (fp32 on CPU; mask logits are of order +-10 thanks to tests/_model_fixtures.make_informative):
- 2D decode vs SAM2ImagePredictor: |d logits| <= 1e-4, |d IoU| <= 1e-5 (measured 0, identical ops);
- tracking vs SAM2VideoPredictor with memories stored in bf16 like the predictor: |d logits| <= 1e-3
  (measured ~6e-6; batching K objects vs the predictor's per-object batch of 1 changes summation order);
  with fp32 memories (our default) the only difference is the predictor's bf16 rounding: <= 5e-2 (~3e-4).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from sam2.modeling.sam2_base import NO_OBJ_SCORE

from _model_fixtures import S, TEST_CFG, build_tiny, smooth_frames
from sam2_train.model.build import (CKPT_FILES, SAM_CONFIG_NAMES, CheckpointMismatchError, build_sam2_base,
                                    _hydra_search_path, image_size_overrides, load_state_strict, resolve_sam_config)
from sam2_train.model.prompts import jitter_boxes, masks_to_boxes, sample_click
from sam2_train.model.sam2_model import SAM2Seg, upsample_logits

LOGIT_TOL_2D, IOU_TOL_2D = 1e-4, 1e-5
LOGIT_TOL_VIDEO, LOGIT_TOL_VIDEO_FP32_MEM = 1e-3, 5e-2


@pytest.fixture(scope="module")
def model_eval():
    return SAM2Seg(build_tiny().eval())


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    """4 smooth 64x64 RGB frames as a JPEG folder (what SAM2VideoPredictor.init_state reads)."""
    d = tmp_path_factory.mktemp("frames")
    frames = (smooth_frames(4).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(os.path.join(d, f"{i:05d}.jpg"))
    return str(d)


def _video_predictor_like(sam):
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        vp = build_sam2_base(TEST_CFG, None, S,
                             hydra_overrides_extra=["++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor"])
    vp.load_state_dict(sam.state_dict())  # strict: the same random weights
    return vp.eval()


# ---------------------------------------------------------------------------------------------- 2D parity
def test_decode_matches_sam2_image_predictor(model_eval):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    m = model_eval
    pred = SAM2ImagePredictor(m.sam)
    pred._bb_feat_sizes = [(S // 4, S // 4), (S // 8, S // 8), (S // 16, S // 16)]  # hard-coded for 1024
    rng = np.random.default_rng(0)
    imgs = (rng.random((2, S, S, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0  # (B=2,3,S,S) in [0,1]
    boxes = torch.tensor([[[10., 12, 40, 50], [3, 5, 60, 30]], [[0, 0, 64, 64], [20, 20, 33, 47]]])  # (2,K=2,4)
    pts = torch.tensor([[[[20., 30], [40, 10]], [[5, 5], [50, 50]]],
                        [[[1., 60], [30, 30]], [[44, 2], [10, 10]]]])  # (2,2,P=2,2) xy
    labels = torch.tensor([[[1, 0], [1, 1]], [[1, -1], [0, 1]]], dtype=torch.int32)  # (2,2,2)
    with torch.no_grad():
        feats = m.encode(x)
        out_box = m.decode(feats, boxes=boxes)
        out_pts = m.decode(feats, points=pts, point_labels=labels, multimask=True)
        out_both = m.decode(feats, boxes=boxes, points=pts, point_labels=labels)
    assert out_box.masks.shape == (2, 2, S // 4, S // 4) and out_box.ious.shape == (2, 2)
    assert out_box.object_scores.shape == (2, 2)
    assert out_pts.masks.shape == (2, 2, 3, S // 4, S // 4) and out_pts.ious.shape == (2, 2, 3)
    assert out_box.masks.abs().max() > 1.0 and (out_box.masks > 0).any() and (out_box.masks < 0).any()

    for b in range(2):
        pred.set_image(imgs[b])
        # boxes: all K objects in one predictor call (its batched-object mode)
        pm, pi, pl = pred.predict(box=boxes[b].numpy(), multimask_output=False, return_logits=True)
        ours = upsample_logits(out_box.masks[b], S)  # (K,S,S)
        assert np.abs(ours.numpy() - pm[:, 0]).max() <= LOGIT_TOL_2D
        assert np.abs(out_box.ious[b].numpy() - pi[:, 0]).max() <= IOU_TOL_2D
        assert np.abs(out_box.masks[b].clamp(-32, 32).numpy() - pl[:, 0]).max() <= LOGIT_TOL_2D
        for k in range(2):  # points (per object; the predictor pads nothing, so no label -1 rows there)
            keep = labels[b, k] >= 0
            pm, pi, _ = pred.predict(point_coords=pts[b, k][keep].numpy(), point_labels=labels[b, k][keep].numpy(),
                                     multimask_output=True, return_logits=True)
            if keep.all():
                assert np.abs(upsample_logits(out_pts.masks[b, k], S).numpy() - pm).max() <= LOGIT_TOL_2D
                assert np.abs(out_pts.ious[b, k].numpy() - pi).max() <= IOU_TOL_2D
            pm, pi, _ = pred.predict(point_coords=pts[b, k].numpy(), point_labels=labels[b, k].numpy(),
                                     box=boxes[b, k].numpy(), multimask_output=False, return_logits=True)
            assert np.abs(upsample_logits(out_both.masks[b, k], S).numpy() - pm[0]).max() <= LOGIT_TOL_2D
            assert np.abs(out_both.ious[b, k].numpy() - pi).max() <= IOU_TOL_2D


def test_preprocess_grey_and_forward(model_eval):
    m = model_eval
    grey = torch.rand(2, 1, S, S)
    a = m.preprocess(grey)
    b = m.preprocess(grey.expand(-1, 3, -1, -1))
    assert a.shape == (2, 3, S, S) and torch.equal(a, b)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(a, (grey - mean) / std)
    with pytest.raises(ValueError):
        m.preprocess(torch.rand(2, 3, S + 32, S + 32))
    with torch.no_grad():
        f = m.encode(grey)
        assert [tuple(x.shape) for x in f.feats] == [(2, 32, S // 4, S // 4), (2, 64, S // 8, S // 8),
                                                      (2, 256, S // 16, S // 16)]
        assert [tuple(p.shape) for p in f.pos] == [(1, 256, S // 4, S // 4), (1, 256, S // 8, S // 8),
                                                    (1, 256, S // 16, S // 16)]
        boxes = torch.tensor([[10., 10, 40, 40]]).expand(2, 1, 4)
        o1 = m(grey, boxes=boxes)  # nn.Module forward (DDP entry)
        o2 = m.decode(list(f.feats), boxes=boxes)  # a plain list of levels (as DFE hands back) works too
        torch.testing.assert_close(o1.masks, o2.masks)
        # no no_mem_embed in the features: decode adds it (image case), so adding it twice changes the output
        f2 = f.replace([f.feats[0], f.feats[1], f.feats[2] + m.sam.no_mem_embed.view(1, -1, 1, 1)])
        assert not torch.allclose(m.decode(f2, boxes=boxes).masks, o1.masks)
        # padding prompt for an object with an invalid box differs from its real box
        bv = torch.tensor([[True], [False]])
        o3 = m.decode(f, boxes=boxes, box_valid=bv)
        torch.testing.assert_close(o3.masks[0], o1.masks[0])
        assert not torch.allclose(o3.masks[1], o1.masks[1])
    up = upsample_logits(o1.masks, (S, 2 * S))
    assert up.shape == (2, 1, S, 2 * S)


# ------------------------------------------------------------------------------------------- video parity
def _run_video_predictor(vp, frames_dir, prompts, start, reverse):
    st = vp.init_state(frames_dir)
    for obj_id, kw in prompts:
        vp.add_new_points_or_box(st, obj_id=obj_id, **kw)
    return st, {t: m for t, _, m in vp.propagate_in_video(st, start_frame_idx=start, reverse=reverse)}


def test_track_matches_sam2_video_predictor_forward_boxes(model_eval, frames_dir):
    from sam2.utils.misc import load_video_frames

    m = model_eval
    vp = _video_predictor_like(m.sam)
    boxes0 = torch.tensor([[10., 12, 40, 50], [3, 5, 60, 30]])  # K=2 objects, prompted on frame 0
    st, ref = _run_video_predictor(vp, frames_dir, [(k + 1, dict(frame_idx=0, box=boxes0[k])) for k in range(2)],
                                   start=0, reverse=False)
    imgs, _, _ = load_video_frames(frames_dir, S, False, compute_device=torch.device("cpu"))
    assert torch.equal(imgs, st["images"])  # the exact tensors the predictor tracks
    T = imgs.shape[0]
    boxes = torch.zeros(T, 2, 4)
    boxes[0] = boxes0
    valid = torch.zeros(T, 2, dtype=torch.bool)
    valid[0] = True
    with torch.no_grad():
        feats = m.encode_normalized(imgs)  # all T frames in one batched call
        out = m.track(feats, boxes=boxes, box_valid=valid, memory_dtype=torch.bfloat16)
        out32 = m.track(feats, boxes=boxes, box_valid=valid)
    assert out.masks.shape == (T, 2, S // 4, S // 4) and out.object_scores.shape == (T, 2)
    assert out.prompt_frames.tolist() == [True, False, False, False]
    assert (out.object_scores > 0).all()  # informative model: objects present, masks not replaced by -1024
    ours, ours32 = upsample_logits(out.masks, S), upsample_logits(out32.masks, S)
    for t in range(T):
        ref_t = ref[t][:, 0]  # (K,S,S)
        assert (ref_t > 0).any() and (ref_t < 0).any()
        assert (ours[t] - ref_t).abs().max() <= LOGIT_TOL_VIDEO, t
        assert (ours32[t] - ref_t).abs().max() <= LOGIT_TOL_VIDEO_FP32_MEM, t


def test_track_matches_sam2_video_predictor_reverse_clicks(model_eval, frames_dir):
    from sam2.utils.misc import load_video_frames

    m = model_eval
    vp = _video_predictor_like(m.sam)
    clicks = torch.tensor([[[30., 20]], [[10., 50]]])  # (K=2,P=1,2) xy on the last frame
    T, last = 4, 3
    _, ref = _run_video_predictor(
        vp, frames_dir,
        [(k + 1, dict(frame_idx=last, points=clicks[k], labels=torch.ones(1, dtype=torch.int32))) for k in range(2)],
        start=last, reverse=True)
    imgs, _, _ = load_video_frames(frames_dir, S, False, compute_device=torch.device("cpu"))
    pts = torch.zeros(T, 2, 1, 2)
    lab = torch.full((T, 2, 1), -1, dtype=torch.int32)
    pts[last], lab[last] = clicks, 1
    with torch.no_grad():
        out = m.track(m.encode_normalized(imgs), points=pts, point_labels=lab, direction="reverse",
                      start_frame=last, memory_dtype=torch.bfloat16)
    ours = upsample_logits(out.masks, S)
    assert sorted(ref) == [0, 1, 2, 3]
    for t in range(T):
        assert (ours[t] - ref[t][:, 0]).abs().max() <= LOGIT_TOL_VIDEO, t


def test_track_matches_sam2_video_predictor_per_object_prompt_frames(model_eval, frames_dir):
    """Object 1 is boxed on frames 0 and 2, object 2 on frame 0 only: SAM-2's predictor tracks object 2 into
    frame 2 from its own memory (frame 2 is a conditioning frame of object 1 only); so must we."""
    from sam2.utils.misc import load_video_frames

    m = model_eval
    vp = _video_predictor_like(m.sam)
    b0 = torch.tensor([[10., 12, 40, 50], [3, 5, 60, 30]])
    b2 = torch.tensor([14., 10, 44, 52])
    _, ref = _run_video_predictor(vp, frames_dir, [(1, dict(frame_idx=0, box=b0[0])), (2, dict(frame_idx=0, box=b0[1])),
                                                   (1, dict(frame_idx=2, box=b2))], start=0, reverse=False)
    imgs, _, _ = load_video_frames(frames_dir, S, False, compute_device=torch.device("cpu"))
    T = imgs.shape[0]
    boxes = torch.zeros(T, 2, 4)
    boxes[0], boxes[2, 0] = b0, b2
    valid = torch.zeros(T, 2, dtype=torch.bool)
    valid[0], valid[2, 0] = True, True
    with torch.no_grad():
        out = m.track(m.encode_normalized(imgs), boxes=boxes, box_valid=valid, memory_dtype=torch.bfloat16)
    ours = upsample_logits(out.masks, S)
    for t in range(T):
        assert (ours[t] - ref[t][:, 0]).abs().max() <= LOGIT_TOL_VIDEO, t


# ---------------------------------------------------------------------------------------------- gradients
def test_track_gradients_reach_all_trained_modules():
    sam = build_tiny(seed=1)  # train mode
    m = SAM2Seg(sam)
    T, K = 3, 2
    clip = smooth_frames(T, seed=3)[:, :1]  # grey (T,1,S,S)
    boxes = torch.tensor([[8., 8, 40, 40], [20, 10, 60, 50]]).expand(T, K, 4)
    valid = torch.zeros(T, K, dtype=torch.bool)
    valid[0] = True
    out = m.track(m.encode(clip), boxes=boxes, box_valid=valid)
    assert out.masks.requires_grad
    target = torch.zeros(T, K, S // 4, S // 4)
    target[..., 4:10, 4:10] = 1
    loss = (torch.nn.functional.binary_cross_entropy_with_logits(out.masks[1:], target[1:])
            + torch.nn.functional.binary_cross_entropy_with_logits(out.object_scores, torch.ones(T, K)))
    loss.backward()

    def gnorm(mod):
        return sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.grad is not None)

    for name in ("image_encoder", "sam_mask_decoder", "sam_prompt_encoder", "memory_attention",
                 "memory_encoder", "obj_ptr_proj"):
        assert gnorm(getattr(sam, name)) > 0, name
    assert sam.maskmem_tpos_enc.grad is not None and sam.maskmem_tpos_enc.grad.abs().sum() > 0
    # all weights still fp32
    assert all(p.dtype == torch.float32 for p in sam.parameters())


def test_streaming_tracker_prunes_and_matches_unpruned():
    # small memory windows so that an 8-frame volume exercises stripping and dropping
    sam = build_tiny(seed=2, overrides=["++model.num_maskmem=3", "++model.max_obj_ptrs_in_encoder=4"]).eval()
    m = SAM2Seg(sam)
    T, K = 8, 2
    clip = smooth_frames(T, seed=5)[:, :1]
    boxes = torch.tensor([[8., 8, 40, 40], [20, 10, 60, 50]]).expand(T, K, 4)
    valid = torch.zeros(T, K, dtype=torch.bool)
    valid[2] = True
    valid[5, 0] = True  # frame 5: a prompt for object 0 only -> object 1 is tracked into it
    with torch.no_grad():
        feats = m.encode(clip)
        full = m.track(feats, boxes=boxes, box_valid=valid)  # direction "both" from frame 2
        outs = {}
        for prune in (True, False):
            tr = m.tracker(valid, prune=prune)
            tr.add_prompts([2, 5], feats.select([2, 5]), boxes=boxes[[2, 5]], box_valid=valid[[2, 5]])
            res, sizes, asked = {}, [], []
            for reverse, order in ((False, range(2, T)), (True, range(1, -1, -1))):
                if reverse:
                    tr.clear_non_cond()
                for t in order:  # one frame's features at a time, computed only when some object needs them
                    res[t] = tr.step(t, lambda t=t: asked.append(t) or feats.select(t), reverse=reverse)
                    for _, _, g in tr.groups:
                        nc = g.output_dict["non_cond_frame_outputs"]
                        sizes.append((len(nc), sum("maskmem_features" in e for e in nc.values())))
            outs[prune] = (res, sizes, tr, asked)
    res_p, sizes_p, tr_p, asked = outs[True]
    assert tr_p.prompt_frames == [2, 5]
    assert [objs for _, objs, _ in tr_p.groups] == [[0], [1]]       # objects 0 and 1 have different prompt frames
    assert asked == [3, 4, 5, 6, 7, 1, 0]                           # frame 2 is prompted for both: never encoded
    g0 = tr_p.groups[0][2]
    assert max(n for n, _ in sizes_p) <= 2 * g0.ptr_window + 1
    assert max(k for _, k in sizes_p) <= 2 * g0.mem_window + 1
    assert max(k for _, k in sizes_p) < max(k for _, k in outs[False][1])  # pruning dropped spatial memories
    for t in range(T):
        torch.testing.assert_close(res_p[t].masks, outs[False][0][t].masks, rtol=0, atol=0)
        torch.testing.assert_close(full.masks[t], res_p[t].masks[0], rtol=0, atol=0)
        assert res_p[t].masks.shape == (1, K, S // 4, S // 4)
    assert full.prompt_frames.tolist() == [t in (2, 5) for t in range(T)]
    # frames are tracked from memory, not re-decoded from the prompt: tracked frames differ from prompt frames
    assert not torch.allclose(full.masks[3], full.masks[2])
    # object 1 on frame 5 comes from its memory; a padding-only prompt decode there would differ
    cond5 = m.decode(feats.select(5), boxes=boxes[5:6], box_valid=valid[5:6])
    assert not torch.allclose(full.masks[5, 1], cond5.masks[0, 1], atol=1e-3)


def test_tracker_without_prompted_objects_and_step_before_prompts():
    sam = build_tiny(seed=2).eval()
    m = SAM2Seg(sam)
    T, K = 4, 3
    feats = m.encode(smooth_frames(T, seed=1)[:, :1])
    valid = torch.zeros(T, K, dtype=torch.bool)
    valid[1, 2] = True                                             # only object 2 is ever prompted
    tr = m.tracker(valid)
    with pytest.raises(RuntimeError, match="add_prompts first"):
        tr.step(1, feats.select(1))
    with torch.no_grad():
        tr.add_prompts([1], feats.select([1]), boxes=torch.tensor([[[8., 8, 40, 40]] * K]), box_valid=valid[[1]])
        out = tr.step(2, feats.select(2))
    assert out.masks.shape == (1, K, S // 4, S // 4)
    assert (out.masks[0, :2] == NO_OBJ_SCORE).all() and (out.object_scores[0, :2] == NO_OBJ_SCORE).all()
    assert (out.masks[0, 2] != NO_OBJ_SCORE).any()


def test_track_requires_a_prompt(model_eval):
    f = model_eval.encode(torch.rand(2, 1, S, S))
    with pytest.raises(ValueError, match="prompted frame"):
        model_eval.track(f, boxes=torch.zeros(2, 1, 4), box_valid=torch.zeros(2, 1, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path, model_eval):
    path = tmp_path / "tiny.pt"
    torch.save({"model": model_eval.sam.state_dict()}, path)
    sam2 = build_sam2_base(TEST_CFG, str(path), S).eval()
    assert sam2.training is False and all(p.dtype == torch.float32 for p in sam2.parameters())
    m2 = SAM2Seg(sam2)
    x = torch.rand(1, 1, S, S)
    boxes = torch.tensor([[[5., 6, 50, 40]]])
    with torch.no_grad():
        a, b = model_eval(x, boxes=boxes), m2(x, boxes=boxes)
    assert torch.equal(a.masks, b.masks) and torch.equal(a.ious, b.ious)
    # wrapper state dict = SAM-2's, prefixed (normalisation buffers are not persistent)
    assert set(m2.state_dict()) == {f"sam.{k}" for k in sam2.state_dict()}


def test_missing_checkpoint_message(tmp_path):
    missing = str(tmp_path / "nope" / "sam2_hiera_small.pt")
    with pytest.raises(FileNotFoundError) as e:
        build_sam2_base("sam2_hiera_s", missing, 1024)
    msg = str(e.value)
    assert missing in msg and "bash checkpoints/download_ckpts.sh" in msg
    assert "sam2_hiera_s -> checkpoints/sam2_hiera_small.pt" in msg
    assert "sam2.1_hiera_l -> checkpoints/sam2.1_hiera_large.pt" in msg


def test_checkpoint_mismatch_messages(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sam20 = build_sam2_base("sam2_hiera_t", "none", S)
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": sam20.state_dict()}, path)
    with pytest.raises(CheckpointMismatchError) as e:
        build_sam2_base("sam2.1_hiera_t", str(path), S)
    msg = str(e.value)
    assert isinstance(e.value, RuntimeError)
    assert "sam2.1_hiera_t" in msg and str(path) in msg and "missing key(s)" in msg
    assert "no_obj_embed_spatial" in msg or "obj_ptr_tpos_proj" in msg
    assert "Error(s) in loading state_dict" not in msg

    # a modified state dict: renamed key + wrong shape -> all three kinds are listed
    tiny = build_tiny()
    sd = dict(tiny.state_dict())
    sd["renamed.weight"] = sd.pop("no_mem_embed")
    sd["maskmem_tpos_enc"] = torch.zeros(3, 1, 1, 64)
    with pytest.raises(CheckpointMismatchError) as e:
        load_state_strict(tiny, sd, what="my.pt", config="tiny")
    msg = str(e.value)
    for part in ("my.pt", "'tiny'", "1 missing key(s): no_mem_embed", "1 unexpected key(s): renamed.weight",
                 "1 shape mismatch(es): maskmem_tpos_enc: checkpoint (3, 1, 1, 64) vs model (7, 1, 1, 64)"):
        assert part in msg, part

    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {}}, bad)
    with pytest.raises(CheckpointMismatchError, match="official form"):
        build_sam2_base(TEST_CFG, str(bad), S)


def test_random_init_warns_loudly_once_and_not_when_weights_follow(caplog):
    import warnings

    from sam2_train.model.build import WEIGHTS_FROM_CHECKPOINT
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with caplog.at_level("WARNING"):
            sam = build_sam2_base(TEST_CFG, "none", 96)
    said = [w for w in seen if "RANDOMLY INITIALISED" in str(w.message)]
    assert len(said) == 1 and "meaningless without pretrained weights" in str(said[0].message)
    assert "RANDOMLY INITIALISED" not in caplog.text                  # not printed a second time by the logger
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build_sam2_base(TEST_CFG, WEIGHTS_FROM_CHECKPOINT, 96)          # evaluate.py / predict.py / -resume
    assert not [w for w in seen if "RANDOMLY" in str(w.message)]
    assert sam.image_size == 96 and sam.training
    rope = sam.memory_attention.layers[0].self_attn
    assert rope.freqs_cis.shape[0] == (96 // 16) ** 2  # RoPE tables built for S/16 x S/16


# ------------------------------------------------------------------------------------------------ configs
def test_resolve_all_config_names_and_compose():
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    assert set(SAM_CONFIG_NAMES) == set(CKPT_FILES)
    for name in SAM_CONFIG_NAMES:
        resolved = resolve_sam_config(name)
        sub = "sam2.1" if name.startswith("sam2.1_") else "sam2"
        assert resolved == f"configs/{sub}/{name}.yaml"
        with _hydra_search_path(None):                       # what build_sam2_base composes, without building it
            cfg = compose(config_name=resolved, overrides=image_size_overrides(512))
        assert cfg.model._target_ == "sam2.modeling.sam2_base.SAM2Base" and cfg.model.image_size == 512
        assert list(cfg.model.memory_attention.layer.cross_attention.feat_sizes) == [32, 32]
        assert ("no_obj_embed_spatial" in cfg.model) == name.startswith("sam2.1_")
    assert GlobalHydra.instance().is_initialized()  # sam2's own hydra setup survives our builds


def test_resolve_yaml_paths_unknown_and_image_size(monkeypatch):
    assert resolve_sam_config(TEST_CFG) == TEST_CFG
    monkeypatch.chdir(os.path.dirname(os.path.dirname(TEST_CFG)))
    assert resolve_sam_config("configs/sam2_hiera_test.yaml") == TEST_CFG  # relative to the cwd
    with pytest.raises(ValueError) as e:
        resolve_sam_config("sam2_hiera_xl")
    assert all(n in str(e.value) for n in SAM_CONFIG_NAMES)
    with pytest.raises(ValueError, match="not found"):
        resolve_sam_config("missing_dir/model.yaml")
    for bad in (100, 48, 0):
        with pytest.raises(ValueError, match="multiple of 32"):
            build_sam2_base(TEST_CFG, "none", bad)
    # repeated builds from a yaml path in one process (hydra global state restored every time)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = build_sam2_base("configs/sam2_hiera_test.yaml", None, 32)
        b = build_sam2_base(TEST_CFG, None, 32)
    assert a.image_size == b.image_size == 32


# ------------------------------------------------------------------------------------------------ prompts
def test_masks_to_boxes():
    m = torch.zeros(2, 3, 10, 12, dtype=torch.bool)
    m[0, 0, 2:5, 3:8] = True
    m[0, 1, 9, 11] = True
    m[1, 2, 0:10, 0:1] = True
    boxes, valid = masks_to_boxes(m)
    assert boxes.shape == (2, 3, 4) and valid.shape == (2, 3) and boxes.dtype == torch.float32
    assert boxes[0, 0].tolist() == [3, 2, 8, 5] and boxes[0, 1].tolist() == [11, 9, 12, 10]
    assert boxes[1, 2].tolist() == [0, 0, 1, 10]
    assert valid.tolist() == [[True, True, False], [False, False, True]]
    assert boxes[0, 2].tolist() == [0, 0, 0, 0]


def test_sample_click_is_xy_inside_mask():
    g = torch.Generator().manual_seed(0)
    m = torch.zeros(3, 16, 20, dtype=torch.bool)
    m[0, 5, 9] = True  # row 5, column 9 -> (x, y) = (9, 5)
    m[1, 2:6, 10:18] = True
    coords, labels = sample_click(m, g)
    assert coords.shape == (3, 2) and labels.tolist() == [1, 1, -1]
    assert coords[0].tolist() == [9, 5]
    x, y = coords[1].long().tolist()
    assert m[1, y, x]
    many = sample_click(m[1:2].expand(200, -1, -1), g)[0]
    assert len({tuple(c) for c in many.tolist()}) > 10  # random, not always the same pixel
    assert m[1, many[:, 1].long(), many[:, 0].long()].all()


def test_jitter_boxes():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[10., 10, 30, 20], [0, 0, 64, 64], [5, 5, 6, 6]]).repeat(50, 1)
    valid = torch.tensor([True, True, False]).repeat(50)
    j = jitter_boxes(boxes, valid, 0.2, generator=g, bounds=64)
    assert torch.equal(j[~valid], boxes[~valid])
    assert not torch.equal(j[valid], boxes[valid])
    assert (j[..., :2] >= 0).all() and (j[..., 2:] <= 64).all()
    assert (j[..., 2] >= j[..., 0] + 1).all() and (j[..., 3] >= j[..., 1] + 1).all()
    d = (j[0::3] - boxes[0::3]).abs()
    assert (d[:, [0, 2]] <= 0.2 * 20 + 1e-5).all() and (d[:, [1, 3]] <= 0.2 * 10 + 1e-5).all()


# ------------------------------------------------------------------------------------- download script
def test_download_script_knows_every_checkpoint():
    import subprocess

    script = os.path.join(os.path.dirname(os.path.dirname(TEST_CFG)), "..", "checkpoints", "download_ckpts.sh")
    script = os.path.normpath(script)
    text = open(script).read()
    assert "dl.fbaipublicfiles.com/segment_anything_2" in text and "072824" in text and "092824" in text
    for name, fname in CKPT_FILES.items():
        assert fname in text and f"{name}) echo {fname}" in text
    readme = open(os.path.join(os.path.dirname(script), "README.md")).read()
    for name, fname in CKPT_FILES.items():
        assert f"| `{name}` |" in readme and f"`{fname}`" in readme
    r = subprocess.run(["bash", script, "not_a_checkpoint.pt"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown checkpoint" in r.stderr  # validated before any download


def test_autocast_bf16_keeps_fp32_weights_and_outputs():
    # CUDA runs use bf16 autocast; CPU autocast exercises the same dtype paths (forward only: CPU bf16
    # backward kernels take tens of seconds to warm up)
    m = SAM2Seg(build_tiny(image_size=32, seed=4))  # smallest legal size
    clip = smooth_frames(2, size=32, seed=1)[:, :1]
    boxes = torch.tensor([[4., 4, 20, 20]]).expand(2, 1, 4)
    valid = torch.tensor([[True], [False]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.track(m.encode(clip), boxes=boxes, box_valid=valid, memory_dtype=torch.bfloat16)
        out2d = m(clip, boxes=boxes)
    for t in (out.masks, out.ious, out.object_scores, out2d.masks, out2d.ious, out2d.object_scores):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert all(p.dtype == torch.float32 for p in m.parameters())
