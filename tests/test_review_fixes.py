"""Regression tests for the bugs found in review (issue 12, item 3); each failed before its fix.

- CutMix-ed prompts: every click of a prompted class lies inside its mixed box and on its mixed mask
  (also for a class made valid by the partner's component, and for thinned 3D frames);
- pseudo-label confidence is the probability of the assigned label;
- 2D unlabeled steps hold several slabs from different volumes, and CutMix partners come from another slab;
- training and inference resize images the same way (antialiased when shrinking);
- ground-truth and PCSW clicks are in model-input pixel indices (SAM-2 adds the 0.5 itself, once);
- DFE's LayerNorm2d runs in fp32 under bf16 autocast;
- labeled 3D clips thin prompt frames by rank per class, as inference does;
- classes predicted empty are counted beside the HD95/ASD means.
"""
import dataclasses
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam2_train.model.cutmix import resize_masks, sample_box_masks
from sam2_train.model.prompts import Prompts, gt_prompts, mix_prompts

S, SC = 64, 16            # image size, coarse size


# ------------------------------------------------------------------------------------- CutMix prompts
def _coarse_cell(points: torch.Tensor) -> torch.Tensor:
    """(...,2) xy model-input pixel indices -> (...,2) long coarse-cell indices."""
    return (points * SC / S).floor().long().clamp(0, SC - 1)


def _assert_clicks_on_mixed_masks(out: Prompts):
    """Every valid (row, class): click inside the box and on the mixed component."""
    r, k = torch.nonzero(out.valid, as_tuple=True)
    pts, boxes = out.points[r, k, 0], out.boxes[r, k]
    inside = (pts >= boxes[:, :2]) & (pts < boxes[:, 2:])
    out_of_box = ~inside.all(1)
    assert inside.all(), f"clicks outside their boxes: {pts[out_of_box].tolist()} / {boxes[out_of_box].tolist()}"
    cell = _coarse_cell(pts)
    on_mask = out.masks[r, k, cell[:, 1], cell[:, 0]]
    assert on_mask.all(), f"clicks off the mixed mask: {pts[~on_mask].tolist()}"


def test_mix_prompts_class_made_valid_by_the_partner_gets_the_partners_click():
    masks = torch.zeros(2, 2, SC, SC, dtype=torch.bool)
    masks[0, 0, 1:4, 1:4] = True                       # row 0: class 1 only, top left
    masks[1, 1, 8:12, 9:12] = True                     # row 1: class 2 only, centre
    valid = masks.flatten(2).any(-1)
    points = torch.zeros(2, 2, 2)                      # an invalid class has the click (0, 0)
    points[0, 0] = torch.tensor([9.5, 9.5])            # coarse (2, 2)
    points[1, 1] = torch.tensor([41.5, 37.5])          # coarse (10, 9)
    boxes = torch.zeros(2, 2, 4)
    p = Prompts.single_point(boxes, points, valid, masks=masks)
    cut = torch.zeros(2, S, S, dtype=torch.bool)
    cut[0, 28:52, 28:52] = True                        # row 0 takes row 1's centre; row 1 keeps its own
    out = mix_prompts(p, torch.tensor([1, 0]), cut, S, margin=0)
    assert out.valid[0].tolist() == [True, True]
    assert out.points[0, 1, 0].tolist() == [41.5, 37.5]   # the partner's click, not the corner (0, 0)
    _assert_clicks_on_mixed_masks(out)


def test_mix_prompts_thinned_frame_gets_a_click_of_the_pasted_component():
    """3D: a frame thinned out (valid False, mask cleared, PCSW click kept) becomes valid by the paste."""
    masks = torch.zeros(2, 1, SC, SC, dtype=torch.bool)
    masks[0, 0, 2:6, 2:6] = True                       # the class's component on the thinned frame...
    masks[1, 0, 9:13, 9:13] = True
    points = torch.tensor([[[13.5, 13.5]], [[41.5, 41.5]]])
    valid = torch.tensor([[False], [True]])            # ...thinned away: mask cleared, click kept
    p = Prompts.single_point(torch.zeros(2, 1, 4), points, valid, masks=masks & valid[..., None, None])
    cut = torch.zeros(2, S, S, dtype=torch.bool)
    cut[0, 32:56, 32:56] = True                        # pastes the lower-right part of row 1's component
    out = mix_prompts(p, torch.tensor([1, 0]), cut, S, margin=0)
    assert out.valid[0, 0]
    assert out.boxes[0, 0].tolist() == [36.0, 36.0, 52.0, 52.0]        # the pasted part alone
    _assert_clicks_on_mixed_masks(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mix_prompts_clicks_always_inside_mixed_box_and_mask(seed):
    g = torch.Generator().manual_seed(seed)
    n, k = 48, 3
    yy, xx = torch.meshgrid(torch.arange(SC), torch.arange(SC), indexing="ij")
    cy, cx = torch.randint(2, SC - 2, (2, n, k), generator=g).float()
    r = 1.0 + 4.0 * torch.rand(n, k, generator=g)
    d2 = (yy - cy[..., None, None]) ** 2 + (xx - cx[..., None, None]) ** 2
    ring = torch.rand(n, k, 1, 1, generator=g) < 0.4
    masks = (d2 <= r[..., None, None] ** 2) & (~ring | (d2 >= (r[..., None, None] - 1.2) ** 2))
    masks &= torch.rand(n, k, 1, 1, generator=g) < 0.7                       # some classes absent
    valid = masks.flatten(2).any(-1)
    # clicks: a random pixel of the component, in model-input pixel indices (4x4 block of the cell)
    score = torch.rand(n, k, SC * SC, generator=g) * masks.flatten(2)
    idx = score.argmax(-1)
    cell = torch.stack([idx % SC, idx // SC], -1).float()
    points = torch.where(valid[..., None], cell * (S / SC) + torch.randint(0, 4, (n, k, 2), generator=g), 0.0)
    thinned = valid & (torch.rand(n, k, generator=g) < 0.3)                 # 3D thinning: click kept
    valid &= ~thinned
    p = Prompts.single_point(torch.zeros(n, k, 4), points, valid, masks=masks & valid[..., None, None])
    torch.manual_seed(seed)
    cut = sample_box_masks(n, S, 1.0, "cpu")
    partner = torch.randperm(n, generator=g)
    for margin in (0, 2):
        out = mix_prompts(p, partner, cut, S, margin=margin)
        assert out.valid.sum() > n // 2
        _assert_clicks_on_mixed_masks(out)
    # a row keeps its own click where its class was prompted and the click's pixel and cell were not pasted
    rows = torch.arange(n)[:, None]
    cell = _coarse_cell(points)
    keep = (p.valid & ~cut[rows, points[..., 1].long(), points[..., 0].long()]
            & ~resize_masks(cut, SC)[rows, cell[..., 1], cell[..., 0]])
    assert keep.sum() > n // 2
    assert torch.equal(out.points[..., 0, :][keep], points[keep])


# ---------------------------------------------------------------------------------------- pseudo-labels
def test_pseudo_label_confidence_is_the_probability_of_the_assigned_label():
    from sam2_train.model.labels import pseudo_labels
    refined = torch.tensor([0.4055, 5.0]).view(1, 2, 1, 1)                  # sigmoid 0.6, 0.99
    valid = torch.tensor([[True, False]])              # class 2 has no prompt: coarse fallback 0.9
    coarse = torch.tensor([0.05, 0.05, 0.9]).view(1, 3, 1, 1)
    labels, conf = pseudo_labels(refined, valid, coarse)
    assert labels.item() == 1
    assert conf.item() == pytest.approx(0.6, abs=1e-3)
    # background: one minus the most probable foreground class (a rejected class keeps it uncertain)
    labels, conf = pseudo_labels(torch.full((1, 2, 1, 1), -3.0), valid, coarse)
    assert labels.item() == 0 and conf.item() == pytest.approx(0.1, abs=1e-3)


# --------------------------------------------------------------------------------- 2D unlabeled batches
def _config(*extra, script="2d"):
    import cfg
    return cfg.parse_config(["-dataset", "demo", "-image_size", "64", "-num_workers", "0", *extra], script=script)


@pytest.mark.parametrize("b_u,slab_len,expected", [(4, 4, 2), (2, 4, 2), (8, 2, 4), (12, 4, 3)])
def test_2d_step_draws_several_slabs(b_u, slab_len, expected):
    from sam2_train.methods.registry import method_class
    config = _config("-b_u", str(b_u), "-slab_len", str(slab_len))
    for method in ("sss", "fixmatch"):
        assert method_class(method, "sam2", "2d").unlabeled_items(config) == expected


@pytest.mark.parametrize("world_size", [1, 2])
def test_grouped_sampler_batches_hold_distinct_volumes(world_size):
    from sam2_train.engine.sampling import ResumableSampler
    groups = [v for v in range(7) for _ in range(5 + v)]          # 7 volumes, 5..11 slabs each
    for rank in range(world_size):
        plain = ResumableSampler(len(groups), seed=3, rank=rank, world_size=world_size)
        s = ResumableSampler(len(groups), seed=3, rank=rank, world_size=world_size, groups=groups, block=3)
        for epoch in range(4):
            s.set_epoch(epoch)
            plain.set_epoch(epoch)
            idx = list(s)
            assert sorted(idx) == sorted(plain)                    # the same samples, regrouped
            blocks = [idx[i:i + 3] for i in range(0, len(idx) - len(idx) % 3, 3)]
            assert all(len({groups[i] for i in b}) == 3 for b in blocks)
        s.set_epoch(1)
        s.skip(6)                                                   # samples (no batch_size, as the trainer)
        assert list(s) == s.epoch_indices(1)[6:]                    # still resumable
    with pytest.raises(ValueError, match="groups"):
        ResumableSampler(4, groups=[0, 1], block=2)
    from sam2_train.engine.sampling import distinct_group_blocks
    padded = [0, 1, 2, 3, 0, 1]                                     # drop_last=False repeats samples
    assert sorted(distinct_group_blocks(padded, [0, 0, 1, 1], 2)) == sorted(padded)


def test_unlabeled_slab_dataset_names_its_volumes():
    from dataset.base import UnlabeledSlabDataset
    refs = [types.SimpleNamespace(name=f"v{i}", num_slices=lambda i=i: 3 + i) for i in range(3)]
    ds = UnlabeledSlabDataset(refs, slab_len=2, image_size=16)
    assert ds.groups == [0, 0, 1, 1, 1, 2, 2, 2, 2]


@dataclasses.dataclass
class _Feats:
    """ImageFeatures double: the features and ``replace``."""
    feats: list

    def replace(self, feats):
        return _Feats(list(feats))


class _StubTeacher:
    """Teacher double: the coarse head sees a bright square in every frame, the decoder follows it."""
    num_classes = 2

    def encode(self, x):
        return _Feats([F.avg_pool2d(x, 4)])

    def backbone(self, x):
        return self.encode(x)

    def project(self, raw):
        return raw

    def enhance(self, feats, _=None):
        return feats, feats

    def coarse(self, feats):
        fg = (feats[0][:, 0] > 0.5).float()
        return torch.stack([10 * (1 - fg), 10 * fg, torch.full_like(fg, -10.0)], 1)

    def refine(self, feats, prompts):
        fg = (feats[0][:, 0] > 0.5).float()
        return torch.stack([20 * fg - 10, torch.full_like(fg, -10.0)], 1)

    def gates(self, cfg):
        return None


def test_2d_cutmix_partners_come_from_another_slab():
    from sam2_train.methods.registry import method_class
    from sam2_train.model.pcsw import PCSWConfig
    bu, length = 3, 4
    x = torch.zeros(bu, length, 1, S, S)
    x[..., 16:40, 16:40] = 0.9
    views = {"image_w": x, "image_s1": x.clone(), "image_s2": x.clone()}
    config = dataclasses.replace(_config("-method", "sss", "-slab_len", str(length), "-cutmix_p", "1"),
                                 pcsw=PCSWConfig()).replace(model={"freeze_encoder": False})
    step = method_class("sss", "sam2", "2d")(_StubTeacher(), config, teacher=_StubTeacher())
    for _ in range(5):
        u = step.teacher_targets(views)
        rows = torch.arange(2 * bu * length)
        assert ((u.partner // length) != (rows // length)).all()                   # another slab
        assert ((u.partner >= bu * length) == (rows >= bu * length)).all()         # of the same view


# ------------------------------------------------------------------------------------------- resizing
def _checkerboard(d=3, h=100, w=90):
    yy, xx = np.mgrid[:h, :w]
    return np.repeat((((yy + xx) % 2) * 0.8 + 0.1)[None], d, 0).astype(np.float32)


def test_training_and_inference_resize_alike():
    from dataset.transforms import apply_weak
    from sam2_train.evaluation.predict_sam2 import _Frames
    img = _checkerboard()
    x = torch.from_numpy(img)[:, None]
    ident = {"k": 0, "flip": -1, "angle": 0.0, "zoom": 1.0, "tx": 0.0, "ty": 0.0}
    train, _ = apply_weak(x, None, ident, 32)
    assert float(train.std()) < 0.05                                   # antialiased: no aliasing pattern
    # the augmented (affine) path resamples alike
    shifted, _ = apply_weak(x, None, dict(ident, tx=1e-6), 32)
    assert (shifted - train)[..., 2:-2, 2:-2].abs().max() < 1e-3
    # 3D inference frames
    torch.testing.assert_close(_Frames(img, 32, torch.device("cpu"))[0:3], train)

    # 2D inference: the frames handed to the encoder
    from sam2_train.evaluation.predict_sam2 import predict_slices
    from sam2_train.model.pcsw import PCSWConfig
    seen = []

    class Net(_StubTeacher):
        image_size = 32

        def eval(self):
            return self

        def encode(self, xx):
            seen.append(xx)
            return super().encode(xx)

    import contextlib
    predict_slices(Net(), img, device=torch.device("cpu"), autocast=contextlib.nullcontext, pcsw=PCSWConfig(),
                   infer="pcsw")
    torch.testing.assert_close(torch.cat(seen), train)


# -------------------------------------------------------------------------------------- click frames
def test_gt_click_is_the_pixel_index_sam_adds_the_half_pixel():
    labels = torch.zeros(1, S, S, dtype=torch.long)
    labels[0, 7, 5] = 1                                                 # one pixel: row 7, column 5
    p = gt_prompts(labels, 2, S, jitter=0.0)
    assert p.points[0, 0, 0].tolist() == [5.0, 7.0]
    assert p.boxes[0, 0].tolist() == [5.0, 7.0, 6.0, 8.0]
    # SAM-2's prompt encoder maps index 5 to the pixel centre 5.5 itself
    from sam2.modeling.sam.prompt_encoder import PromptEncoder
    enc = PromptEncoder(embed_dim=32, image_embedding_size=(S // 16, S // 16), input_image_size=(S, S),
                        mask_in_chans=4)
    lab = torch.ones(1, 1, dtype=torch.int32)
    e = enc._embed_points(p.points[:, 0], lab, pad=False) - enc.point_embeddings[1].weight
    torch.testing.assert_close(e, enc.pe_layer.forward_with_coords(torch.tensor([[[5.5, 7.5]]]), (S, S)))


def test_pcsw_click_is_the_coarse_cell_centre_in_pixel_indices():
    from sam2_train.model.pcsw import PCSWConfig, image_prompts
    probs = torch.zeros(1, 2, 3, SC, SC)
    probs[:, :, 0] = 1.0
    probs[:, :, 0, 5, 3] = 0.0
    probs[:, :, 1, 5, 3] = 1.0                                         # class 1 at coarse (x 3, y 5)
    cfg = PCSWConfig(min_voxels=1, margin=0, tau_conf=0.5)
    p = image_prompts(probs, S, cfg, True)
    assert p.valid[:, 0].all()
    # cell 3 covers pixels 12..15, centre 13.5 in pixel indices (SAM-2 adds 0.5 -> 14.0, the cell's centre)
    assert p.points[0, 0, 0].tolist() == [13.5, 21.5]
    assert p.boxes[0, 0].tolist() == [12.0, 20.0, 16.0, 24.0]
    assert not p.points[:, 1].any()                                     # no prompt: zeros


# ------------------------------------------------------------------------------------------------- DFE
def test_dfe_layernorm_runs_in_fp32_under_bf16_autocast():
    from sam2_train.model.dfe import LayerNorm2d
    torch.manual_seed(0)
    ln = LayerNorm2d(64)
    x = (100.0 + torch.randn(2, 64, 5, 5)).bfloat16()                  # large mean, unit spread
    ref = F.layer_norm(x.float().permute(0, 2, 3, 1), (64,), eps=1e-6).permute(0, 3, 1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ln(x)
    assert (y.float() - ref).abs().max() < 0.05


# ------------------------------------------------------------------------------------- 3D prompt frames
def test_labeled_clips_thin_prompt_frames_by_rank_like_inference(monkeypatch):
    import sam2_train.methods.sss_3d as sss_3d
    from sam2_train.model.pcsw import PCSWConfig
    from sam2_train.model.prompts import thin_prompt_frames
    t = 5
    labels = torch.zeros(t, S, S, dtype=torch.long)
    labels[1:5, 10:20, 10:20] = 1                       # class 1 on frames 1..4
    labels[:, 40:50, 40:50] = 2                         # class 2 on every frame
    probs = torch.zeros(t, 3, SC, SC)
    probs[:, 0] = 1.0
    images = torch.rand(t, 1, S, S)
    net = types.SimpleNamespace(num_classes=2, image_size=S, gates=lambda cfg: None)
    config = dataclasses.replace(_config("-method", "sss", "-p_gt", "1", "-prompt", "bbox", "-prompt_freq", "2",
                                         script="3d"), pcsw=PCSWConfig())
    tracked = []                                        # what the labeled clip hands SAM-2's tracker
    monkeypatch.setattr(sss_3d, "track_clips", lambda net, feats, p, b, use_box, use_point: tracked.append(
        (p, b, use_box, use_point)))
    monkeypatch.setattr(sss_3d, "track_loss", lambda tr, target: torch.zeros(()))
    step = sss_3d.SSS3D(net, config)
    step.labeled_mask_loss(None, probs, images, labels, labels, 1)
    (p, clips, use_box, use_point), = tracked
    assert clips == 1 and use_box.all() and not use_point.any()        # ground-truth boxes (-prompt bbox)
    assert p.valid[:, 0].tolist() == [False, True, False, True, False]
    assert p.valid[:, 1].tolist() == [True, False, True, False, True]
    present = torch.stack([(labels == c).flatten(1).any(1) for c in (1, 2)], 1)
    assert torch.equal(p.valid, thin_prompt_frames(present[None], 2)[0])


# ----------------------------------------------------------------------------------------- empty preds
def test_empty_predictions_are_counted_beside_distance_means():
    from sam2_train.evaluation.loop import evaluate_volumes, format_summary
    from sam2_train.evaluation.metrics import summarize, volume_metrics
    gt = np.zeros((3, 12, 12), dtype=np.int64)
    gt[:, 2:6, 2:6] = 1
    gt[:, 7:10, 7:10] = 2
    m = volume_metrics(np.where(gt == 2, 0, gt), gt, 3)
    assert m["empty_pred"].tolist()[:2] == [0.0, 1.0] and np.isnan(m["empty_pred"][2])
    vols = [{"image": gt.astype(np.float32), "label": torch.from_numpy(gt), "name": f"c{i}", "spacing": None}
            for i in range(3)]
    drop = iter([True, True, False])                    # class 2 missed in two of three volumes

    def predict(image, spacing):
        lab = image.astype(np.int64)
        return np.where(lab == 2, 0, lab) if next(drop) else lab

    res = evaluate_volumes(vols, predict, ["A", "B", "C"], protocol="ssl4mis", split="test", progress=False)
    s = res.summary
    assert s["empty_pred"] == {"A": 0, "B": 2, "C": 0, "total": 2}
    assert s["hd95"]["B"] == 0.0                         # the one volume where B was found
    table = format_summary(s, ["A", "B", "C"])
    assert any(line.split()[:4] == ["empty", "0", "2", "0"] for line in table.splitlines())
    assert [r["empty_pred"] for r in res.rows if r["class"] == "B"] == [1.0, 1.0, 0.0]
    # summarize sums count keys over volumes
    rows = [dict(dice=np.array([1.0, 0.0]), empty_pred=np.array([0.0, 1.0])),
            dict(dice=np.array([1.0, 1.0]), empty_pred=np.array([np.nan, 1.0]))]
    assert summarize(rows, ["a", "b"])["empty_pred"] == {"a": 0, "b": 2, "total": 2}


def test_interior_points_centre_of_a_rectangle_and_on_a_ring():
    from sam2_train.model.prompts import interior_points
    m = torch.zeros(1, 3, SC, SC, dtype=torch.bool)
    m[0, 0, 2:7, 3:10] = True                                          # rows 2..6, columns 3..9
    yy, xx = torch.meshgrid(torch.arange(SC), torch.arange(SC), indexing="ij")
    d2 = (yy - 8) ** 2 + (xx - 8) ** 2
    m[0, 1] = (d2 <= 36) & (d2 >= 16)                                  # a ring: its centre is background
    p = interior_points(m)
    assert p[0, 0].tolist() == [6.0, 4.0]
    x, y = p[0, 1].long().tolist()
    assert m[0, 1, y, x]
    assert p[0, 2].tolist() == [0.0, 0.0]                               # empty mask
