"""PCSW that degrades gracefully: fallback prompts, coarse fusion, calibrated gates, acceptance rates
(hand-built maps)."""

from types import SimpleNamespace

import numpy as np
import torch

from sam2_train.methods.weak_to_strong import pcsw_rates
from sam2_train.model.labels import NEG, fuse_probs, pseudo_labels
from sam2_train.model.pcsw import PCSWConfig, pcsw_prompts
from tests.test_pcsw import H, W, probs_from


def cfg(**kw):
    base = dict(thresh=0.5, tau=0.8, tau_conf=0.6, min_len=2, max_len=0, min_voxels=4,
                min_area=0.0, max_area=0.5, margin=0)
    base.update(kw)
    return PCSWConfig(**base)


def _flicker_and_blobs():
    """Class 1 flickers (rejected by continuity); class 2 continuous (accepted); class 3 absent."""
    D = 6
    lab = np.zeros((D, H, W), int)
    lab[0::2, 4:10, 4:10] = 1            # class 1, slices 0, 2, 4: three 1-slice components of 36 voxels
    lab[2, 12:15, 2:5] = 1               # ... plus a 9-voxel blob on slice 2 (separate component)
    lab[:, 20:28, 20:28] = 2
    conf = np.full((D, H, W), 0.9)
    conf[2, 4:10, 4:10] = 0.95           # the slice-2 component of class 1 has the largest confidence mass
    return lab, conf


def test_fallback_prompts_rejected_class_with_largest_confidence_mass():
    lab, conf = _flicker_and_blobs()
    probs = probs_from(lab, conf=conf)
    off = pcsw_prompts(probs, cfg=cfg(fallback=False))
    assert not off.valid[:, 0].any() and off.valid[:, 1].all()
    assert off.status.tolist() == [3, 1, 0]                       # rejected, accepted, not predicted
    assert not off.fallback.any()

    on = pcsw_prompts(probs, cfg=cfg(fallback=True))
    assert on.status.tolist() == [2, 1, 0]
    # the fallback is the slice-2 component at rows/cols 4..9 (mass 36 * 0.95), not the blob or slices 0/4
    assert on.valid[:, 0].tolist() == [False, False, True, False, False, False]
    assert on.fallback[:, 0].tolist() == [False, False, True, False, False, False]
    torch.testing.assert_close(on.boxes[2, 0], torch.tensor([4.0, 4.0, 10.0, 10.0]))
    assert torch.equal(on.masks[2, 0], torch.as_tensor(np.pad(np.ones((6, 6), bool), ((4, 22), (4, 22)))))
    assert on.windows[0].tolist() == [2, 3]
    # the accepted class and the absent class are unchanged, and never flagged
    assert torch.equal(on.valid[:, 1:], off.valid[:, 1:]) and torch.equal(on.boxes[:, 1:], off.boxes[:, 1:])
    assert not on.fallback[:, 1:].any() and not on.valid[:, 2].any()


def test_fallback_batched_matches_single_slabs_and_respects_body():
    lab, conf = _flicker_and_blobs()
    p1, p2 = probs_from(lab, conf=conf), probs_from(np.zeros_like(lab))
    both = pcsw_prompts(torch.stack([p1, p2]), cfg=cfg())
    one = pcsw_prompts(p1, cfg=cfg())
    assert torch.equal(both.valid[0], one.valid) and torch.equal(both.fallback[0], one.fallback)
    assert both.status.tolist() == [[2, 1, 0], [0, 0, 0]] and not both.valid[1].any()
    # a body mask that excludes the class-1 components leaves class 1 rejected (no fallback outside the body)
    body = torch.ones(lab.shape, dtype=torch.bool)
    body[:, :16, :16] = False
    out = pcsw_prompts(p1, body_mask=body, cfg=cfg())
    assert out.status.tolist() == [3, 1, 0] and not out.valid[:, 0].any()


def test_calibrated_gates_accept_a_low_confidence_class():
    D = 4
    lab = np.zeros((D, H, W), int)
    lab[:, 10:20, 10:20] = 1
    probs = probs_from(lab, conf=0.45, K=3)                     # argmax, but below thresh 0.5 / tau_conf 0.6
    assert pcsw_prompts(probs, cfg=cfg(fallback=False)).status.tolist() == [0, 0, 0]
    calib = torch.tensor([0.4, -1.0, 0.9])                       # class 1 calibrated at 0.4; class 2 not observed
    out = pcsw_prompts(probs, cfg=cfg(fallback=False), class_conf=calib)
    assert out.status.tolist() == [1, 0, 0] and out.valid[:, 0].all() and not out.fallback.any()
    # a calibrated value above the fixed gates never makes them stricter
    probs2 = probs_from(lab, conf=0.7, K=3)
    out2 = pcsw_prompts(probs2, cfg=cfg(fallback=False), class_conf=torch.tensor([0.95, 0.95, 0.95]))
    assert out2.valid[:, 0].all()


def test_sss_net_class_conf_ema():
    from sam2_train.model.sss_net import SSSNet
    net = SSSNet.__new__(SSSNet)
    torch.nn.Module.__init__(net)
    net.num_classes = 2
    net.register_buffer("class_conf", torch.full((2,), -1.0))
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4] = 1                                            # class 1 on the top half; class 2 absent
    probs = torch.zeros(1, 3, 4, 4)
    probs[:, 0], probs[:, 1, :2], probs[:, 1, 2:] = 0.2, 0.8, 0.1
    SSSNet.update_class_conf(net, probs, labels, momentum=0.5)
    torch.testing.assert_close(net.class_conf, torch.tensor([0.8, -1.0]))      # first observation sets it
    probs[:, 1, :2] = 0.4
    SSSNet.update_class_conf(net, probs, labels, momentum=0.5)
    torch.testing.assert_close(net.class_conf, torch.tensor([0.6, -1.0]))      # EMA; absent class unchanged
    SSSNet.update_class_conf(net, torch.full_like(probs, float("nan")), labels, momentum=0.5)
    torch.testing.assert_close(net.class_conf, torch.tensor([0.6, -1.0]))      # non-finite step: unchanged
    assert "class_conf" in net.state_dict()
    assert SSSNet.gates(net, PCSWConfig(calibrate=False)) is None
    assert SSSNet.gates(net, PCSWConfig(calibrate=True)) is net.class_conf


def test_pseudo_labels_fallback_stricter_threshold():
    refined = torch.full((1, 2, 2, 2), -10.0)
    refined[0, 0, 0] = torch.logit(torch.tensor([0.96, 0.99]))   # class 1 on row 0: confidences 0.96, 0.99
    refined[0, 1, 1] = torch.logit(torch.tensor([0.96, 0.99]))   # class 2 on row 1
    valid = torch.tensor([[True, True]])
    coarse = torch.full((1, 3, 2, 2), 1 / 3)
    labels, conf = pseudo_labels(refined, valid, coarse)
    assert labels.tolist() == [[[1, 1], [2, 2]]]
    fallback = torch.tensor([[True, False]])                     # class 1 prompted by a fallback
    labels_f, conf_f = pseudo_labels(refined, valid, coarse, fallback, tau_fallback=0.98)
    assert torch.equal(labels_f, labels)
    torch.testing.assert_close(conf_f[0, 0], torch.tensor([0.0, 0.99]))         # 0.96 < 0.98 dropped
    torch.testing.assert_close(conf_f[0, 1], conf[0, 1])                        # non-fallback class untouched
    torch.testing.assert_close(conf_f[0, 1], torch.tensor([0.96, 0.99]))


def test_fusion_averages_prompted_classes_and_keeps_unprompted_coarse():
    # 1 slice, 2 classes, 3 pixels. coarse softmax per pixel (bg, c1, c2); class 1 prompted, class 2 not
    coarse = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]).T.reshape(1, 3, 1, 3)
    refined = torch.tensor([[[[4.0, -4.0, 0.0]], [[NEG, NEG, NEG]]]])                 # (1,K=2,1,3)
    prompted = torch.tensor([[True, False]])
    q = fuse_probs(coarse, refined, prompted)
    s = torch.sigmoid(torch.tensor([4.0, -4.0, 0.0]))
    c1 = 0.5 * (torch.tensor([0.5, 0.3, 0.1]) + s)                                    # averaged by hand
    c2 = torch.tensor([0.3, 0.1, 0.8])                                                # unprompted: coarse
    torch.testing.assert_close(q[0, 1, 0], c1)
    torch.testing.assert_close(q[0, 2, 0], c2)
    torch.testing.assert_close(q[0, 0, 0], (1 - c1 - c2).clamp_min(0))                # the remaining mass
    assert q[0].argmax(0).tolist() == [[1, 0, 2]]
    # no prompt at all: exactly the coarse head (so fusion never loses a class the coarse head finds)
    torch.testing.assert_close(fuse_probs(coarse, refined, torch.zeros(1, 2, dtype=torch.bool)), coarse)
    # the more certain of the two wins a disagreement: SAM-2 sure (0.9999) beats coarse 0.4; coarse sure (0.98)
    # beats SAM-2 unsure (0.27); both sure and opposed (0.98 vs 0.0001) lands just under 0.5
    coarse2 = torch.tensor([[0.6, 0.4], [0.02, 0.98], [0.02, 0.98]]).T.reshape(1, 2, 1, 3)   # K=1: (bg, c1)
    q2 = fuse_probs(coarse2, torch.tensor([[[[9.0, -1.0, -9.0]]]]), torch.tensor([[True]]))
    assert q2[0].argmax(0).tolist() == [[1, 1, 0]]
    # the fused teacher targets are the argmax and its probability
    labels, conf = pseudo_labels(refined, prompted, coarse, fuse=True)
    assert labels.tolist() == [[[1, 0, 2]]]
    torch.testing.assert_close(conf[0, 0], torch.stack([c1[0], q[0, 0, 0, 1], c2[2]]))
    # the paper's rule (fuse=False): the refined logits alone decide the prompted class, background elsewhere
    labels_p, _ = pseudo_labels(refined, prompted, coarse, fuse=False)
    assert labels_p.tolist() == [[[1, 0, 0]]]


def test_pcsw_rates():
    status = torch.tensor([[1, 2, 0], [3, 2, 0], [1, 1, 0], [0, 3, 0]])
    r = pcsw_rates(status, 3)
    assert set(r) == {f"pcsw_{n}_{c}" for n in ("accept", "fallback", "reject") for c in (1, 2, 3)}
    assert all(v.dim() == 0 for v in r.values())
    torch.testing.assert_close(torch.stack([r["pcsw_accept_1"], r["pcsw_fallback_1"], r["pcsw_reject_1"]]),
                               torch.tensor([2 / 3, 0.0, 1 / 3]))
    torch.testing.assert_close(torch.stack([r["pcsw_accept_2"], r["pcsw_fallback_2"], r["pcsw_reject_2"]]),
                               torch.tensor([0.25, 0.5, 0.25]))
    assert float(r["pcsw_accept_3"]) == 0.0 and pcsw_rates(None, 3) == {}


def test_object_score_target_ignores_confidence_mask():
    from sam2_train.methods.sss_3d import Tracked, track_loss
    n, k, s = 2, 2, 8
    target = torch.zeros(n, k, s, s)
    target[:, 0, 2:4, 2:4] = 1                                   # class 1 present on both frames
    valid_px = torch.zeros(n, s, s, dtype=torch.bool)            # ... but every pixel is uncertain
    tr = Tracked(masks=torch.full((n, k, s, s), -1024.0), scores=torch.full((n, k), 3.0),
                 prompted=torch.ones(n, k, dtype=torch.bool))
    loss = track_loss(tr, target, valid_px)
    sp = torch.nn.functional.softplus
    expected = (sp(torch.tensor(-3.0)) * n + sp(torch.tensor(3.0)) * n) / (n * k)   # class 1 present, class 2 absent
    torch.testing.assert_close(loss, expected)


def test_graceful_flags_and_3d_single_slice_default():
    import cfg as cfgmod
    c2, c = cfgmod.parse_config(["-dataset", "demo"]), cfgmod.parse_config(["-dataset", "demo"], script="3d")
    assert (c2.pcsw.min_len, c.pcsw.min_len, c2.pcsw.multifocal, c.pcsw.multifocal) == (2, 1, False, True)
    assert (c.pcsw.fallback, c.pcsw.calibrate, c.pcsw.fuse, c.method.tau_fallback) == (True, True, True, 0.98)
    off = cfgmod.parse_config(["-pcsw_fallback", "0", "-pcsw_calibrate", "0", "-pcsw_fuse", "0",
                               "-tau_fallback", "0.99", "-pcsw_min_len", "3"], script="3d")
    assert (off.pcsw.fallback, off.pcsw.calibrate, off.pcsw.fuse, off.method.tau_fallback, off.pcsw.min_len) == \
        (False, False, False, 0.99, 3)


def test_single_slice_lesion_prompted_with_min_len_1():
    lab = np.zeros((5, H, W), int)
    lab[2, 10:14, 10:14] = 1                                     # a lesion on one slice only
    probs = probs_from(lab)
    assert not pcsw_prompts(probs, cfg=cfg(fallback=False, min_len=2)).valid.any()
    out = pcsw_prompts(probs, cfg=cfg(fallback=False, min_len=1))
    assert out.valid[:, 0].tolist() == [False, False, True, False, False] and out.status[0] == 1


def test_multifocal_prompts_every_kept_component_and_keeps_diffuse_structures():
    D = 4
    lab = np.zeros((D, H, W), int)
    lab[:, 2:8, 2:8] = 1                                         # lesion A, all slices (144 voxels)
    lab[:, 20:24, 20:24] = 1                                     # lesion B, all slices (64 voxels): C = 144/208 < 0.8
    lab[1, 12:14, 26:28] = 1                                     # a 4-voxel speck on slice 1 (kept: min_voxels 4)
    probs = probs_from(lab)
    single = pcsw_prompts(probs, cfg=cfg(fallback=False, min_len=1))
    # single structure: the largest component holds < 0.8 of every window (e.g. 36/52 on slice 0): rejected
    assert single.status[0] == 3 and not single.valid[:, 0].any()
    multi = pcsw_prompts(probs, cfg=cfg(fallback=False, min_len=1, multifocal=True))
    assert multi.status[0] == 1 and multi.valid[:, 0].all() and multi.windows[0].tolist() == [0, 4]
    for d in range(D):                                           # the prompt covers every kept component
        assert torch.equal(multi.masks[d, 0], torch.as_tensor(lab[d] == 1))
    torch.testing.assert_close(multi.boxes[0, 0], torch.tensor([2.0, 2.0, 24.0, 24.0]))
    torch.testing.assert_close(multi.boxes[1, 0], torch.tensor([2.0, 2.0, 28.0, 24.0]))
    # with fallback the single-structure mode prompts the component of largest mass (A), flagged
    fb = pcsw_prompts(probs, cfg=cfg(fallback=True, min_len=1))
    assert fb.status[0] == 2 and fb.fallback[:, 0].all()
    assert torch.equal(fb.masks[0, 0], torch.as_tensor(np.pad(np.ones((6, 6), bool), ((2, 24), (2, 24)))))


def test_multifocal_fallback_uses_the_merged_structure():
    lab = np.zeros((3, H, W), int)
    lab[0, 2:8, 2:8] = 1                                         # two kept lesions on slice 0 only; min_len 2 ->
    lab[0, 20:24, 20:24] = 1                                     # no eligible window, fallback on the union
    out = pcsw_prompts(probs_from(lab), cfg=cfg(fallback=True, min_len=2, multifocal=True))
    assert out.status[0] == 2 and out.valid[:, 0].tolist() == [True, False, False]
    assert torch.equal(out.masks[0, 0], torch.as_tensor(lab[0] == 1))


def test_class_weighted_ce():
    import pytest

    import cfg as cfgmod
    from sam2_train.model.losses import ce_dice_loss
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    w = torch.tensor([0.2, 1.0, 3.0])
    no_dice = dict(dice_weight=0.0)
    torch.testing.assert_close(ce_dice_loss(logits, target, class_weight=w, **no_dice),
                               torch.nn.functional.cross_entropy(logits, target, weight=w))
    torch.testing.assert_close(ce_dice_loss(logits, target, class_weight=torch.ones(3), **no_dice),
                               ce_dice_loss(logits, target, **no_dice))
    valid = torch.rand(2, 5, 5, generator=g) > 0.5
    t_ignored = torch.where(valid, target, torch.full_like(target, -100))
    torch.testing.assert_close(ce_dice_loss(logits, target, valid, class_weight=w, **no_dice),
                               torch.nn.functional.cross_entropy(logits, t_ignored, weight=w, ignore_index=-100))
    splits = SimpleNamespace(num_classes=3, class_names=("a", "b", "c"), info={})     # what the data says
    c = cfgmod.with_data(cfgmod.parse_config(["-ce_weights", "0.5,1,2,2"]), splits)
    assert c.semi.ce_weights == (0.5, 1.0, 2.0, 2.0)
    torch.testing.assert_close(c.semi.ce_class_weight("cpu"), torch.tensor([0.5, 1.0, 2.0, 2.0]))
    assert cfgmod.with_data(cfgmod.parse_config([]), splits).semi.ce_class_weight("cpu") is None
    with pytest.raises(ValueError, match="-ce_weights needs 4 weights"):
        cfgmod.with_data(cfgmod.parse_config(["-ce_weights", "1,2"]), splits)


def test_foreground_oversampling_of_labeled_clips():
    from dataset.base import LabeledClipDataset, VolumeRef, class_slices, foreground_clip_start
    n, T = 20, 8
    lab = np.zeros((n, 6, 6), np.int64)
    lab[17, 2:4, 2:4] = 2                                        # class 2 on slice 17 only; class 1 absent
    lab[3:5, 0, 0] = 3
    pres = class_slices(lab)
    assert pres.shape == (n, 3) and pres[:, 1].nonzero()[0].tolist() == [17] and not pres[:, 0].any()
    rng = np.random.default_rng(0)
    starts = [foreground_clip_start(pres, T, rng) for _ in range(300)]
    for st in starts:                                            # the clip holds a slice of the drawn class
        assert 0 <= st <= n - T and (st <= 17 < st + T or st <= 4 and st + T > 3)
    assert {s for s in starts if s >= 10} == {10, 11, 12}        # around slice 17 every valid start occurs
    assert foreground_clip_start(np.zeros((n, 2), bool), T, rng) is None
    assert foreground_clip_start(pres[:5], T, rng) == 0          # shorter than the clip: start 0

    class Ref(VolumeRef):
        name, has_label, num_classes = "v_fg", True, 3

        def num_slices(self):
            return n

        def load(self, with_label=True):
            img = np.zeros((n, 6, 6), np.float32)
            img[:, 0, 1] = np.arange(n) / n                          # slice index encoded in the image
            return img, (lab if with_label else None), None, None

    def hits(p):
        ds = LabeledClipDataset([Ref()], T, 6, seed=0, fg_oversample=p, augment=False)
        got = 0
        for epoch in range(40):
            ds.set_epoch(epoch)
            got += int((ds[0]["label"] > 0).any())
        return got
    assert hits(1.0) == 40 and hits(0.0) < 40                    # random clips miss the lesions often


def test_class_conf_buffer_checkpointed_and_old_checkpoints_load():
    from sam2_train.model.sss_net import SSSNet
    net = SSSNet.__new__(SSSNet)
    torch.nn.Module.__init__(net)
    net.num_classes = 2
    net.register_buffer("class_conf", torch.tensor([0.3, 0.7]))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    torch.testing.assert_close(state["class_conf"], torch.tensor([0.3, 0.7]))
    net.class_conf.fill_(0.0)
    net.load_state_dict(state, strict=True)
    torch.testing.assert_close(net.class_conf, torch.tensor([0.3, 0.7]))
    net.load_state_dict({}, strict=True)                         # written before the buffer existed
    torch.testing.assert_close(net.class_conf, torch.tensor([-1.0, -1.0]))
