"""PCSW prompt generator and the unconstrained coarse boxes (sam2_train/model/pcsw.py), on hand-built maps."""

import numpy as np
import pytest
import torch

from sam2_train.model.pcsw import PCSWConfig, _argmax_masks, coarse_box_prompts, image_prompts, pcsw_prompts
from sam2_train.model.prompts import LABEL_PAD, LABEL_POS, Prompts

H = W = 32


def probs_from(label, K=3, conf=0.9):
    """label (D,H,W) int in 0..K (conf may be a (D,H,W) array) -> probs (D,K+1,H,W): p_label = conf."""
    label = torch.as_tensor(label)
    conf = torch.as_tensor(conf, dtype=torch.float32).expand(label.shape)
    onehot = torch.nn.functional.one_hot(label.long(), K + 1).permute(0, 3, 1, 2).float()
    rest = ((1 - conf) / K).unsqueeze(1)
    return onehot * conf.unsqueeze(1) + (1 - onehot) * rest


def cfg(**kw):
    base = dict(thresh=0.5, tau=0.8, tau_conf=0.6, min_len=2, max_len=0, min_voxels=4,
                min_area=0.0, max_area=0.5, margin=0, fallback=False)
    base.update(kw)
    return PCSWConfig(**base)


def test_continuous_structure_exact_boxes_and_point():
    D = 4
    lab = np.zeros((D, H, W), int)
    lab[:3, 10:20, 20:30] = 1
    lab[3, 12:18, 22:28] = 1  # the last slice is smaller (inside the others): its own box (22,12,28,18)
    conf = np.full((D, H, W), 0.9)
    conf[1, 12, 25] = 0.97    # most confident pixel of slice 1
    out = pcsw_prompts(probs_from(lab, conf=conf), cfg=cfg())
    assert isinstance(out, Prompts)
    assert out.boxes.shape == (D, 3, 4) and out.points.shape == (D, 3, 1, 2)
    assert out.valid.shape == (D, 3) and out.masks.shape == (D, 3, H, W)
    assert out.valid[:, 0].all() and not out.valid[:, 1:].any()
    # one positive click per prompted class, padding elsewhere
    assert out.point_labels.shape == (D, 3, 1)
    assert torch.equal(out.point_labels[..., 0], torch.where(out.valid, LABEL_POS, LABEL_PAD).int())
    exp = torch.tensor([[20, 10, 30, 20]] * 3 + [[22, 12, 28, 18]], dtype=torch.float32)
    torch.testing.assert_close(out.boxes[:, 0], exp)
    assert out.points[1, 0, 0].tolist() == [25, 12]   # pixel index (column, row) of the most confident pixel
    for d in range(D):  # every point lies inside the prompted component
        x, y = out.points[d, 0, 0].long().tolist()
        assert out.masks[d, 0, y, x]
        assert torch.equal(out.masks[d, 0], torch.as_tensor(lab[d] == 1))
    assert out.windows[0].tolist() == [0, 4] and out.windows[1].tolist() == [-1, -1]
    assert out.scores[0] == 1.0
    # margin grows the box and clips it to the map
    lab2 = np.zeros((D, H, W), int)
    lab2[:, 0:5, 28:32] = 2
    out = pcsw_prompts(probs_from(lab2), cfg=cfg(margin=2))
    torch.testing.assert_close(out.boxes[:, 1], torch.tensor([[26, 0, 32, 7]] * D, dtype=torch.float32))
    # tail shape check: a box that ends one pixel short of the border
    lab3 = np.zeros((2, H, W), int)
    lab3[:, 5, 7] = 3
    lab3[:, 6, 8] = 3
    out = pcsw_prompts(probs_from(lab3), cfg=cfg(min_voxels=1))
    torch.testing.assert_close(out.boxes[:, 2], torch.tensor([[7, 5, 9, 7]] * 2, dtype=torch.float32))


def test_flicker_rejected_and_continuity_window():
    D = 6
    lab = np.zeros((D, H, W), int)
    lab[0::2, 4:10, 4:10] = 1          # class 1 flickers: slices 0, 2, 4
    lab[:, 20:28, 20:28] = 2           # class 2 continuous on all 6 slices ...
    lab[5, 2:6, 24:30] = 2             # ... plus a second small blob on slice 5 only
    # default select="longest": the longest window with C >= tau is the full one (C = 384/408 = 0.94)
    out = pcsw_prompts(probs_from(lab), cfg=cfg())
    assert not out.valid[:, 0].any()
    assert out.windows[0].tolist() == [-1, -1]
    assert out.windows[1].tolist() == [0, 6] and out.valid[:, 1].all()
    torch.testing.assert_close(out.boxes[5, 1], torch.tensor([20, 20, 28, 28], dtype=torch.float32))
    # select="continuity": the full window has C = 384/408 < 1; the best is [0, 5) (C = 1), the longest with C = 1
    out = pcsw_prompts(probs_from(lab), cfg=cfg(select="continuity"))
    assert not out.valid[:, 0].any()
    assert out.windows[1].tolist() == [0, 5]
    assert out.valid[:, 1].tolist() == [True] * 5 + [False]
    torch.testing.assert_close(out.boxes[:5, 1], torch.tensor([[20, 20, 28, 28]] * 5, dtype=torch.float32))
    assert not out.masks[5].any() and not out.boxes[5].any()
    # with -pcsw_max_len 3 the window is a length-3 one starting at slice 0 (earliest of the ties)
    out = pcsw_prompts(probs_from(lab), cfg=cfg(max_len=3, select="continuity"))
    assert out.windows[1].tolist() == [0, 3]
    # if the flickering class had continuous slices it would be accepted (same shapes)
    lab[1, 4:10, 4:10] = 1
    out = pcsw_prompts(probs_from(lab), cfg=cfg())
    assert out.windows[0].tolist() == [0, 3] and out.valid[:3, 0].all() and not out.valid[3:, 0].any()


def test_continuity_threshold():
    D = 4
    lab = np.zeros((D, H, W), int)
    lab[:, 2:8, 2:8] = 1
    lab[:, 20:26, 20:26] = 1           # two equal continuous structures: C = 0.5 in every window
    out = pcsw_prompts(probs_from(lab), cfg=cfg())
    assert not out.valid.any() and out.scores[0] == pytest.approx(0.5)
    out = pcsw_prompts(probs_from(lab), cfg=cfg(tau=0.5))
    assert out.valid[:, 0].all()
    # the larger of the two is chosen when it dominates
    lab[:, 20:30, 20:30] = 1
    out = pcsw_prompts(probs_from(lab), cfg=cfg(tau=0.7))
    assert out.valid[:, 0].all()
    torch.testing.assert_close(out.boxes[0, 0], torch.tensor([20.0, 20, 30, 30]))


def test_tiny_and_low_confidence_rejected():
    D = 3
    lab = np.zeros((D, H, W), int)
    lab[0:2, 3, 3] = 1                 # 2 voxels < min_voxels = 4
    lab[:, 10:16, 10:16] = 2           # confident enough? set below
    lab[:, 20:24, 20:24] = 3
    conf = np.full((D, H, W), 0.9)
    conf[:, 10:16, 10:16] = 0.55       # >= thresh 0.5 but mean confidence < tau_conf 0.6
    out = pcsw_prompts(probs_from(lab, conf=conf), cfg=cfg())
    assert out.valid.any(0).tolist() == [False, False, True]
    out = pcsw_prompts(probs_from(lab, conf=conf), cfg=cfg(min_voxels=2, tau_conf=0.5))
    assert out.valid.any(0).tolist() == [True, True, True]
    # below the binarisation threshold: not foreground at all (argmax alone is not enough)
    conf[:, 20:24, 20:24] = 0.45
    out = pcsw_prompts(probs_from(lab, conf=conf), cfg=cfg(tau_conf=0.0))
    assert not out.valid[:, 2].any()


def test_area_bounds_and_body_mask():
    D = 3
    lab = np.zeros((D, H, W), int)
    lab[:, 0:12, 0:12] = 1             # 144 px = 14% of the slice
    lab[:, 20:23, 20:23] = 2           # 9 px = 0.9%
    p = probs_from(lab)
    out = pcsw_prompts(p, cfg=cfg(max_area=0.1))
    assert out.valid.any(0).tolist() == [False, True, False]
    out = pcsw_prompts(p, cfg=cfg(min_area=0.05))
    assert out.valid.any(0).tolist() == [True, False, False]
    # a component exceeding the area bound on ONE slice only is rejected as a whole
    lab[1, 0:16, 0:16] = 1             # 256 px = 25%
    out = pcsw_prompts(probs_from(lab), cfg=cfg(max_area=0.2))
    assert not out.valid[:, 0].any()
    # body mask: class 2 lies outside the body
    body = torch.zeros(D, H, W, dtype=torch.bool)
    body[:, 0:16, 0:16] = True
    out = pcsw_prompts(p, body_mask=body, cfg=cfg())
    assert out.valid.any(0).tolist() == [True, False, False]
    body[:, 20:22, 20:23] = True       # 6 of its 9 pixels inside: "mostly inside" -> kept
    out = pcsw_prompts(p, body_mask=body, cfg=cfg())
    assert out.valid.any(0).tolist() == [True, True, False]


def test_short_slab_uses_its_depth():
    lab = np.zeros((1, H, W), int)
    lab[0, 5:10, 5:10] = 1
    out = pcsw_prompts(probs_from(lab), cfg=cfg(min_len=2))
    assert out.valid[0, 0] and out.windows[0].tolist() == [0, 1]


def smooth_probs(N, D, K, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N * D, K + 1, h // 4, w // 4, generator=g) * 6
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.view(N, D, K + 1, h, w).softmax(2)


def test_batch_equals_per_slab_calls():
    p = smooth_probs(3, 4, 3, 32, 32)
    body = torch.ones(3, 4, 32, 32, dtype=torch.bool)
    body[1, :, :, :8] = False
    c = cfg(tau=0.6, tau_conf=0.6, min_voxels=4, margin=1)
    out = pcsw_prompts(p, body_mask=body, cfg=c)
    assert out.boxes.shape == (3, 4, 3, 4) and out.masks.shape == (3, 4, 3, 32, 32)
    assert out.valid.any(), "fixture should produce some prompts"
    for n in range(3):
        one = pcsw_prompts(p[n], body_mask=body[n], cfg=c)
        for name in ("boxes", "points", "valid", "masks", "windows", "scores"):
            assert torch.equal(getattr(out, name)[n], getattr(one, name)), name
    # boxes are the tight boxes (+margin) of the masks, points inside them
    m = out.masks[out.valid]
    pts = out.points[..., 0, :][out.valid].long()
    assert m[torch.arange(len(m)), pts[:, 1], pts[:, 0]].all()


def test_scaled_image_prompts_and_window_lengths():
    lab = np.zeros((2, H, W), int)
    lab[:, 4:8, 8:16] = 1
    out = pcsw_prompts(probs_from(lab), cfg=cfg())
    big = out.scaled(H, 128)
    boxes, points = big.boxes, big.points[..., 0, :]
    torch.testing.assert_close(boxes[0, 0], torch.tensor([32.0, 16, 64, 32]))
    assert ((points[0, 0] >= boxes[0, 0, :2]) & (points[0, 0] < boxes[0, 0, 2:])).all()
    # a point keeps its pixel centre: (x + 0.5) * 128 / 32 - 0.5
    torch.testing.assert_close(points[0, 0], (out.points[0, 0, 0] + 0.5) * 4 - 0.5)
    assert out.scaled(H, H) is out
    # image_prompts: the same PCSW prompts in model-input pixels, slab rows flattened to N*D
    ip = image_prompts(probs_from(lab)[None], 128, cfg(), use_pcsw=True)
    assert ip.boxes.shape == (2, 3, 4) and ip.points.shape == (2, 3, 1, 2) and ip.status.shape == (1, 3)
    assert torch.equal(ip.boxes, boxes) and torch.equal(ip.points, big.points) and torch.equal(ip.valid, out.valid)
    assert not ip.fallback.any()
    c = PCSWConfig(min_len=3, max_len=5)
    assert c.window_lengths(8) == (3, 5) and c.window_lengths(2) == (2, 2)


def test_coarse_box_prompts_exact():
    D = 2
    lab = np.zeros((D, H, W), int)
    lab[0, 3:6, 4:9] = 1
    lab[0, 30, 31] = 1                  # unconstrained: the stray pixel widens the box
    lab[1, 0:2, 0:3] = 3
    conf = np.full((D, H, W), 0.9)
    conf[0, 4, 6] = 0.95
    p = probs_from(lab, conf=conf)
    out = coarse_box_prompts(p, margin=1)
    assert out.valid.tolist() == [[True, False, False], [False, False, True]]
    torch.testing.assert_close(out.boxes[0, 0], torch.tensor([3.0, 2, 32, 32]))
    torch.testing.assert_close(out.boxes[1, 2], torch.tensor([0.0, 0, 4, 3]))
    assert out.points[0, 0, 0].tolist() == [6, 4]
    assert not out.boxes[0, 1].any() and not out.points[0, 1].any()
    out0 = coarse_box_prompts(p, margin=0)
    torch.testing.assert_close(out0.boxes[0, 0], torch.tensor([4.0, 3, 32, 31]))
    # batch of slabs
    outb = coarse_box_prompts(torch.stack([p, p.flip(0)]), margin=1)
    assert outb.boxes.shape == (2, D, 3, 4)
    assert torch.equal(outb.boxes[1], out.boxes.flip(0))


def test_argmax_masks_match_torch_argmax():
    g = torch.Generator().manual_seed(0)
    p = (torch.rand(2, 6, 3, 8, 8, generator=g) * 4).round() / 4   # many ties
    ref = torch.nn.functional.one_hot(p.argmax(1), 6).permute(0, 4, 1, 2, 3)[:, 1:].bool()
    assert torch.equal(_argmax_masks(p), ref)


def _slices(d, rows, cols, D=6):
    lab = np.zeros((D, H, W), int)
    for z in d:
        lab[z, rows[0]:rows[1], cols[0]:cols[1]] = 1
    return lab


def _two_lesions():
    lab = _slices(range(4), (2, 8), (2, 8), D=4)
    lab[:, 20:24, 20:24] = 1                      # a second, smaller lesion on every slice: C = 144/208 < 0.8
    return lab


# case: class-1 map, PCSW settings -> status (1 accepted, 2 fallback, 3 rejected), prompted slices, fallback-flagged
# slices, the box on each prompted slice
EDGE_CASES = {
    "gap: the longest unbroken run is prompted": (
        np.maximum(_slices((0, 1), (4, 10), (4, 10)), _slices((3, 4, 5), (4, 12), (4, 12))), {},
        1, [3, 4, 5], [], [[4, 4, 12, 12]] * 3),
    "gap, multifocal: still the run (a window never spans an empty slice)": (
        np.maximum(_slices((0, 1), (4, 10), (4, 10)), _slices((3, 4, 5), (4, 12), (4, 12))), {"multifocal": True},
        1, [3, 4, 5], [], [[4, 4, 12, 12]] * 3),
    "single slice, N_min 2: rejected": (_slices((2,), (10, 14), (10, 14), D=5), {"fallback": False},
                                        3, [], [], []),
    "single slice, N_min 1: accepted": (_slices((2,), (10, 14), (10, 14), D=5), {"min_len": 1},
                                        1, [2], [], [[10, 10, 14, 14]]),
    "single slice, N_min 2, fallback: flagged": (_slices((2,), (10, 14), (10, 14), D=5), {"fallback": True},
                                                 2, [2], [2], [[10, 10, 14, 14]]),
    "two lesions, one structure: rejected": (_two_lesions(), {"min_len": 1, "fallback": False}, 3, [], [], []),
    "two lesions, multifocal: both in one prompt": (_two_lesions(), {"min_len": 1, "multifocal": True}, 1,
                                                   [0, 1, 2, 3], [], [[2, 2, 24, 24]] * 4),
    "two lesions, fallback: the larger, flagged": (_two_lesions(), {"min_len": 1, "fallback": True}, 2,
                                                  [0, 1, 2, 3], [0, 1, 2, 3], [[2, 2, 8, 8]] * 4),
    "flicker: rejected": (_slices((0, 2, 4), (4, 10), (4, 10)), {"fallback": False}, 3, [], [], []),
    "flicker, fallback: one slice, flagged": (_slices((0, 2, 4), (4, 10), (4, 10)), {"fallback": True}, 2,
                                              [0], [0], [[4, 4, 10, 10]]),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_pcsw_edge_cases(case):
    lab, kw, status, prompted, flagged, boxes = EDGE_CASES[case]
    out = pcsw_prompts(probs_from(lab), cfg=cfg(**kw))
    assert int(out.status[0]) == status
    assert [d for d in range(lab.shape[0]) if out.valid[d, 0]] == prompted
    assert [d for d in range(lab.shape[0]) if out.fallback[d, 0]] == flagged
    assert [out.boxes[d, 0].tolist() for d in prompted] == boxes
    for d in prompted:                           # every click lies on the prompted component, inside the box
        x, y = out.points[d, 0, 0].long().tolist()
        assert out.masks[d, 0, y, x] and lab[d, y, x] == 1
