"""DFE (sam2_train/model/dfe.py) and the coarse head (sam2_train/model/coarse_head.py)."""

import pytest
import torch

from sam2_train.model.coarse_head import CoarseHead
from sam2_train.model.dfe import DFE

CH = (32, 64, 256)


def feats(b, s=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, s // f, s // f, generator=g) for c, f in zip(CH, (4, 8, 16))]


def set_gamma(dfe, value=0.5):
    with torch.no_grad():
        for blk in dfe.blocks.values():
            blk.gamma.fill_(value)


@pytest.mark.parametrize("sim", ["pixel", "global"])
def test_identity_at_init(sim):
    dfe = DFE(CH, sim=sim)
    w, s = feats(2), feats(2, seed=1)
    w2, s2 = dfe(w, s)
    for a, b in zip(w + s, w2 + s2):
        assert torch.equal(a, b)
    w3, w4 = dfe(w)
    assert w3 is w4
    for a, b in zip(w, w3):
        assert torch.equal(a, b)


@pytest.mark.parametrize("sim", ["pixel", "global"])
def test_equal_views_give_equal_outputs(sim):
    torch.manual_seed(0)
    dfe = DFE(CH, sim=sim)
    set_gamma(dfe)
    w = feats(2)
    w2, s2 = dfe(w, [f.clone() for f in w])
    single, _ = dfe(w)  # the S = W shortcut used on labeled / test images
    for a, b, c, orig in zip(w2, s2, single, w):
        assert torch.equal(a, b)          # D = 0 exactly when phi(S) == phi(W)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(a, orig)  # gamma != 0 changes the features


@pytest.mark.parametrize("sim", ["pixel", "global"])
def test_different_views_and_discrepancy(sim):
    torch.manual_seed(0)
    dfe = DFE(CH, sim=sim)
    set_gamma(dfe)
    w, s = feats(2), feats(2, seed=3)
    w2, s2 = dfe(w, s)
    # W' - W = gamma (F - D), S' - S = gamma (F + D): their difference is 2 gamma D != 0
    d = (s2[0] - s[0]) - (w2[0] - w[0])
    assert d.abs().max() > 1e-3


def test_similarity_shapes():
    w, s = feats(2)[1], feats(2, seed=1)[1]
    pix = DFE(CH, sim="pixel").blocks["1"]
    glo = DFE(CH, sim="global").blocks["1"]
    assert pix.similarity(w, s).shape == (2, 1, 8, 8)
    assert glo.similarity(w, s).shape == (2, 1, 1, 1)
    sig = pix.similarity(w, w)
    torch.testing.assert_close(sig, torch.ones_like(sig))
    sig = pix.similarity(w, -w)
    torch.testing.assert_close(sig, -torch.ones_like(sig))


def test_gradients_reach_all_parameters():
    torch.manual_seed(0)
    dfe = DFE(CH, sim="pixel")
    w, s = feats(2), feats(2, seed=1)
    # at init only gamma receives a gradient (everything else is multiplied by gamma = 0)
    w2, s2 = dfe(w, s)
    sum(o.square().sum() for o in w2 + s2).backward()
    for name, p in dfe.named_parameters():
        if name.endswith("gamma"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    dfe.zero_grad(set_to_none=True)
    set_gamma(dfe, 0.1)
    w2, s2 = dfe(w, s)
    sum(o.square().sum() for o in w2 + s2).backward()
    for name, p in dfe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_batched_strong_views_equal_separate_calls():
    torch.manual_seed(0)
    dfe = DFE(CH, sim="pixel", levels=(1, 2))
    set_gamma(dfe, 0.3)
    w, s1, s2 = feats(2), feats(2, seed=1), feats(2, seed=2)
    cat = [torch.cat([a, b]) for a, b in zip(s1, s2)]
    wb, sb = dfe(w, cat)
    wa1, sa1 = dfe(w, s1)
    wa2, sa2 = dfe(w, s2)
    for l in range(3):
        assert wb[l].shape == (4,) + tuple(w[l].shape[1:])
        torch.testing.assert_close(wb[l], torch.cat([wa1[l], wa2[l]]))
        torch.testing.assert_close(sb[l], torch.cat([sa1[l], sa2[l]]))
    # level 0 is not selected: passes through unchanged (W tiled to the strong batch)
    assert torch.equal(wb[0], torch.cat([w[0], w[0]]))
    assert sb[0] is cat[0]


def test_unselected_levels_and_errors():
    dfe = DFE(CH, levels=(2,))
    set_gamma(dfe, 1.0)
    w = feats(1)
    out, _ = dfe(w)
    assert out[0] is w[0] and out[1] is w[1] and not torch.equal(out[2], w[2])
    with pytest.raises(ValueError):
        DFE(CH, levels=(3,))
    with pytest.raises(ValueError):
        dfe(feats(2), feats(3))  # strong batch not a multiple of the weak batch



def test_bf16_autocast_cpu():
    dfe = DFE(CH)
    set_gamma(dfe, 0.1)
    w, s = feats(1), feats(1, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w2, s2 = dfe(w, s)
    assert all(torch.isfinite(t.float()).all() for t in w2 + s2)


def test_coarse_head_shape_and_grad():
    head = CoarseHead(num_classes=3, in_channels=CH, width=64)
    f = feats(2, s=128)
    out = head(f)
    assert out.shape == (2, 4, 32, 32)
    out.mean().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert sum(p.numel() for p in head.parameters()) < 100_000
    with pytest.raises(ValueError):
        head(f[:2])


def test_two_view_output_matches_hand_computed_values():
    """One pixel, C = 2, W = (1, 0), S = (1, 1); phi = identity; gate a = 2, b = -0.5; gamma = 0.5;
    M(x) = (relu(n0), relu(n2)) with n = LayerNorm(x0, -x0, x1, -x1) (eps 1e-6). By hand:
      sigma = cos(W, S) = 1/sqrt(2) = 0.707107;  g = sigmoid(2 sigma - 0.5) = sigmoid(0.914214) = 0.713862
      M(W): h = (1, -1, 0, 0), mean 0, var 0.5  -> n = (1.414214, -1.414214, 0, 0) -> M(W) = (1.414212, 0)
      M(S): h = (1, -1, 1, -1), mean 0, var 1   -> M(S) = (1.0, 1.0)   (0.9999995 with eps)
      F = g M(W) + (1 - g) M(S) = (1.295690, 0.286138)
      D = (1 - sigma)(S - W) = 0.292893 * (0, 1) = (0, 0.292893)
      W' = W + gamma (F - D) = (1.647845, -0.003377);  S' = S + gamma (F + D) = (1.647845, 1.289516)
    Swapping the gate branches, using (1 + sigma) in D or swapping the signs of D each changes W' or S'."""
    blk = DFE((2,), levels=(0,), sim="pixel").blocks["0"]
    with torch.no_grad():
        blk.phi.weight.zero_()
        blk.phi.weight[0, 0, 1, 1] = blk.phi.weight[1, 1, 1, 1] = 1.0
        blk.phi.bias.zero_()
        conv1, norm, _, conv2 = blk.mlp
        conv1.weight.copy_(torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]]).view(4, 2, 1, 1))
        conv1.bias.zero_()
        norm.weight.fill_(1.0)
        norm.bias.zero_()
        conv2.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]]).view(2, 4, 1, 1))
        conv2.bias.zero_()
        blk.gate_a.fill_(2.0)
        blk.gate_b.fill_(-0.5)
        blk.gamma.fill_(0.5)
    w = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    s = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    w2, s2 = blk(w, s)
    torch.testing.assert_close(w2.flatten(), torch.tensor([1.647845, -0.003377]), rtol=0, atol=2e-5)
    torch.testing.assert_close(s2.flatten(), torch.tensor([1.647845, 1.289516]), rtol=0, atol=2e-5)
    # the single-view shortcut (S = W): sigma = 1, D = 0, F = M(W): W' = W + gamma M(W)
    w3, _ = blk(w)
    torch.testing.assert_close(w3.flatten(), torch.tensor([1 + 0.5 * 1.414212, 0.0]), rtol=0, atol=2e-5)
