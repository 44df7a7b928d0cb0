"""Losses (sam2_train/model/losses.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from sam2_train.model.losses import bce_dice_loss, ce_dice_loss


def rand_case(B=2, C=4, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g), torch.randint(0, C, (B, H, W), generator=g)


def test_ce_dice_perfect_prediction_near_zero():
    _, y = rand_case()
    logits = 30.0 * (2 * F.one_hot(y, 4).permute(0, 3, 1, 2).float() - 1)
    assert ce_dice_loss(logits, y) < 1e-4
    assert ce_dice_loss(torch.zeros_like(logits), y) > 1.0   # and far from 0 otherwise


def test_ce_dice_matches_monai_dicece_without_mask():
    x, y = rand_case()
    ref = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(x, y[:, None])
    torch.testing.assert_close(ce_dice_loss(x, y), ref, rtol=1e-5, atol=1e-6)
    ref_fg = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, include_background=False)(x, y[:, None])
    torch.testing.assert_close(ce_dice_loss(x, y, include_background=False), ref_fg, rtol=1e-5, atol=1e-6)


def test_ce_dice_mask_ignores_pixels():
    x, y = rand_case()
    valid = torch.zeros(2, 16, 16, dtype=torch.bool)
    valid[:, :, :8] = True
    base = ce_dice_loss(x, y, valid)
    x2, y2 = x.clone(), y.clone()
    x2[..., 8:] = torch.randn_like(x2[..., 8:]) * 10
    y2[..., 8:] = 255                                      # ignore index in ignored pixels is fine
    torch.testing.assert_close(ce_dice_loss(x2, y2, valid), base, rtol=0, atol=1e-7)
    # masking is the same as cropping to the valid pixels
    torch.testing.assert_close(base, ce_dice_loss(x[..., :8].contiguous(), y[..., :8].contiguous()),
                               rtol=1e-6, atol=1e-6)
    # and different from not masking
    assert not torch.allclose(base, ce_dice_loss(x, y))
    # nothing valid -> 0, still differentiable
    x3 = x.clone().requires_grad_(True)
    out = ce_dice_loss(x3, y, torch.zeros_like(valid))
    assert out.abs() < 1e-6 and out.requires_grad
    out.backward()
    assert torch.isfinite(x3.grad).all()


def test_ce_dice_bf16_autocast_and_gradients():
    x, y = rand_case()
    x = (x * 1e3).requires_grad_(True)                     # extreme logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ce_dice_loss(x.to(torch.bfloat16), y)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def obj_case(B=2, K=3, H=16, W=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, K, H, W, generator=g), (torch.rand(B, K, H, W, generator=g) > 0.6)


def test_bce_dice_perfect_prediction_near_zero():
    _, t = obj_case()
    logits = 40.0 * (2 * t.float() - 1)
    assert bce_dice_loss(logits, t) < 1e-4
    assert bce_dice_loss(-logits, t) > 1.5


def test_bce_dice_object_weights_exclude_objects():
    x, t = obj_case()
    w = torch.tensor([[1, 0, 1], [0, 0, 1]], dtype=torch.bool)
    base = bce_dice_loss(x, t, w)
    x2 = x.clone()
    x2[0, 1] = 50.0
    x2[1, :2] = -50.0
    torch.testing.assert_close(bce_dice_loss(x2, t, w), base, rtol=0, atol=1e-7)
    # equals the mean of the per-object losses of the counted objects
    per = torch.stack([bce_dice_loss(x[b:b + 1, k:k + 1], t[b:b + 1, k:k + 1]) for b, k in w.nonzero().tolist()])
    torch.testing.assert_close(base, per.mean(), rtol=1e-6, atol=1e-6)
    # float weights weight the objects
    wf = torch.tensor([[2.0, 0, 0], [0, 0, 1.0]])
    exp = (2 * bce_dice_loss(x[:1, :1], t[:1, :1]) + bce_dice_loss(x[1:, 2:], t[1:, 2:])) / 3
    torch.testing.assert_close(bce_dice_loss(x, t, wf), exp, rtol=1e-6, atol=1e-6)


def test_bce_dice_no_object_counts_is_zero_on_graph():
    x, t = obj_case()
    x.requires_grad_(True)
    out = bce_dice_loss(x, t, torch.zeros(2, 3, dtype=torch.bool))
    assert out == 0 and out.requires_grad
    out.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_bce_dice_mask_and_bf16():
    x, t = obj_case()
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[:, 4:, :] = False
    base = bce_dice_loss(x, t, None, valid)
    x2, t2 = x.clone(), t.clone()
    x2[:, :, 4:] = 100.0
    t2[:, :, 4:] = False
    torch.testing.assert_close(bce_dice_loss(x2, t2, None, valid), base, rtol=0, atol=1e-7)
    torch.testing.assert_close(base, bce_dice_loss(x[:, :, :4].contiguous(), t[:, :, :4].contiguous()),
                               rtol=1e-6, atol=1e-6)
    xr = (x * 1e3).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bce_dice_loss(xr.to(torch.bfloat16), t, torch.ones(2, 3), valid)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(xr.grad).all() and xr.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        bce_dice_loss(x, t[:, :2])


def test_bce_dice_equals_independent_formula():
    """Against the written-out definition in float64 numpy: per object o, over the valid pixels V,
    BCE_o = mean_V -(y log p + (1 - y) log(1 - p)), Dice_o = 1 - (2 sum_V p y + 1e-5) / (sum_V p + sum_V y + 1e-5),
    loss = sum_o w_o (0.7 BCE_o + 1.3 Dice_o) / sum_o w_o, p = 1 / (1 + exp(-x))."""
    x, t = obj_case(B=2, K=3, H=5, W=4, seed=3)
    w = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]])
    valid = torch.rand(2, 5, 4, generator=torch.Generator().manual_seed(1)) > 0.3
    got = bce_dice_loss(x, t, w, valid, bce_weight=0.7, dice_weight=1.3)
    xn, yn, vn, wn = x.double().numpy(), t.double().numpy(), valid.numpy(), w.double().numpy()
    num = 0.0
    for b in range(2):
        for k in range(3):
            p, y = 1 / (1 + np.exp(-xn[b, k][vn[b]])), yn[b, k][vn[b]]
            bce = np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))
            dice = 1 - (2 * np.sum(p * y) + 1e-5) / (np.sum(p) + np.sum(y) + 1e-5)
            num += wn[b, k] * (0.7 * bce + 1.3 * dice)
    assert got.item() == pytest.approx(num / wn.sum(), rel=1e-5)
