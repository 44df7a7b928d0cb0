"""Memory levers: -grad_ckpt 1 keeps fewer activations for backward (same gradients), and with a frozen
encoder the teacher's weak-view backbone pass serves the student too (same losses and gradients, 2N instead
of 3N student encoder images), the student projecting it with its own conv_s0/conv_s1."""
import copy
import os
import sys
import warnings

import pytest
import torch

from tests._model_fixtures import TEST_CFG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def make_config(script, *extra, num_classes=3):
    import cfg
    base = ["-dataset", "demo", "-sam_config", TEST_CFG, "-image_size", "64", "-distributed", "none"]
    # 3D: the demo preset's CE weights are for its 5 classes; these tests build 3-class nets
    base += (["-b", "2", "-b_u", "4", "-slab_len", "2"] if script == "2d"
             else ["-video_length", "4", "-b", "1", "-ce_weights", "1,1,1,1"])
    return cfg.parse_config([*base, *extra], script=script).replace(model={"num_classes": num_classes})


def make_net(config, seed=0):
    from sam2_train.model.sss_net import build_sss_net
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_sss_net(config.model)


def make_method(net, teacher, config):
    """The training step of ``config``'s -method (as the trainer builds it), with ``teacher``."""
    from sam2_train.methods.registry import method_class
    klass = method_class(config.semi.method, config.model.student, config.run.script)
    return klass(net, config, teacher=teacher)


def encoder_grads_and_saved(net, x):
    from bench_memory import SavedBytes
    net.train()
    with SavedBytes() as saved:
        feats = net.encode(x).feats
    sum(f.square().mean() for f in feats).backward()
    grads = {n: p.grad.clone() for n, p in net.sam.sam.image_encoder.named_parameters() if p.grad is not None}
    return grads, saved


def test_grad_ckpt_keeps_less_for_backward_with_identical_gradients():
    from sam2_train.engine.ema import ModelEMA
    from sam2_train.model.levers import is_checkpointed
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    plain = make_net(make_config("2d", "-encoder_lr_mult", "1"))
    ckpt = make_net(make_config("2d", "-encoder_lr_mult", "1", "-grad_ckpt", "1"))
    blocks = ckpt.sam.sam.image_encoder.trunk.blocks
    assert all(is_checkpointed(b) for b in blocks)
    assert not any(is_checkpointed(b) for b in plain.sam.sam.image_encoder.trunk.blocks)
    assert list(ckpt.state_dict()) == list(plain.state_dict())             # checkpoints stay interchangeable
    g0, s0 = encoder_grads_and_saved(plain, x)
    g1, s1 = encoder_grads_and_saved(ckpt, x)
    assert s1.bytes < 0.5 * s0.bytes and s1.count < s0.count, (s0.bytes, s1.bytes)
    assert g0.keys() == g1.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6, msg=n)
    # the EMA teacher (deep copy, eval mode, no autograd) runs the plain blocks and saves nothing
    teacher = ModelEMA(ckpt, 0.99).module
    assert all(is_checkpointed(b) for b in teacher.sam.sam.image_encoder.trunk.blocks)
    with torch.no_grad():
        torch.testing.assert_close(teacher.encode(x).feats[-1], plain.eval().encode(x).feats[-1])


class EncodeLog:
    """Records the batch size of every ``net.sam.encode`` call."""

    def __init__(self, net):
        self.sizes, orig = [], net.sam.encode

        def encode(images):
            self.sizes.append(images.shape[0])
            return orig(images)
        net.sam.encode = encode


def frozen_step_setup(script, *extra):
    """A frozen-encoder student and its EMA teacher whose conv_s0/conv_s1 (decoder parameters) have moved apart:
    three SGD steps of the student's own loss on conv_s0/conv_s1, each followed by an EMA update."""
    from sam2_train.engine.ema import ModelEMA
    config = make_config(script, "-encoder_lr_mult", "0", "-tau_u", "0", *extra)
    net = make_net(config)
    ema = ModelEMA(net, 0.99)
    ema.update(net)
    g = torch.Generator().manual_seed(3)
    lead = (2, 2) if script == "2d" else (1, 4)                     # (slabs, L) / (clips, T)
    views = {k: torch.rand(*lead, 1, 64, 64, generator=g) for k in ("image_w", "image_s1", "image_s2")}
    if script == "2d":
        batch_l = {"image": torch.rand(2, 1, 64, 64, generator=g),
                   "label": torch.randint(0, 4, (2, 64, 64), generator=g)}
    else:
        batch_l = {"image": torch.rand(1, 4, 1, 64, 64, generator=g),
                   "label": torch.randint(0, 4, (1, 4, 64, 64), generator=g)}
    student = make_method(net, ema.module, config)
    assert student.frozen_encoder
    dec = net.sam.sam.sam_mask_decoder
    opt = torch.optim.SGD([*dec.conv_s0.parameters(), *dec.conv_s1.parameters()], lr=5.0)
    for _ in range(3):
        opt.zero_grad()
        out = student(batch_l, views, 0)
        (out["loss_x"] + out["loss_u"]).backward()
        opt.step()
        ema.update(net)
    net.zero_grad(set_to_none=True)
    return net, ema.module, student, batch_l, views


@pytest.mark.parametrize("script", ["2d", "3d"])
def test_frozen_encoder_student_pairs_its_own_weak_features_with_its_strong_ones(script):
    """With -encoder_lr_mult 0 the teacher's weak-view backbone pass is shared, but the weak features the
    student's DFE sees (-dfe_views cross: DFE(W, S)) are the student's own (its conv_s0/conv_s1, not the EMA's), at
    every level."""
    net, teacher, student, batch_l, views = frozen_step_setup(script, "-cutmix_p", "0", "-dfe_views", "cross")
    img_w = views["image_w"].flatten(0, 1)
    with torch.no_grad():
        own, ema = net.encode(img_w).feats, teacher.encode(img_w).feats
    # the setting under test: the EMA's level-0/1 projections differ from the student's, its backbone does not
    assert (own[0] - ema[0]).abs().max() > 1e-2 and (own[1] - ema[1]).abs().max() > 1e-2
    torch.testing.assert_close(own[2], ema[2])
    seen = []
    enhance = net.enhance

    def record(feats_w, feats_s=None):
        if feats_s is not None:                      # DFE(W, S) of the unlabeled strong views
            seen.append([f.detach().clone() for f in feats_w])
        return enhance(feats_w, feats_s)
    net.enhance = record
    with torch.no_grad():
        student(batch_l, views, 0)
    del net.enhance
    assert len(seen) == 1
    n = img_w.shape[0]
    for level, (w, mine) in enumerate(zip(seen[0], own)):   # no CutMix: rows 0..n-1 are the weak view itself
        torch.testing.assert_close(w[:n], mine, rtol=1e-5, atol=1e-5, msg=f"level {level}")


@pytest.mark.parametrize("script", ["2d", "3d"])
def test_frozen_encoder_shares_the_weak_view_pass(script):
    """Sharing the teacher's weak-view backbone pass changes nothing but the work: the same losses and gradients
    as encoding the weak view again in the student (2N instead of 3N student encoder images), also when the
    EMA's conv_s0/conv_s1 have moved away from the student's."""
    net, _, student, batch_l, views = frozen_step_setup(script, "-cutmix_p", "1", "-dfe_views", "cross")
    n = views["image_w"].shape[0] * views["image_w"].shape[1]
    out, grads = {}, {}
    for share in (False, True):
        log = EncodeLog(net)
        net.zero_grad(set_to_none=True)
        student.frozen_encoder = share                               # the switch under test
        torch.manual_seed(7)
        out[share] = student(batch_l, views, 0)
        (out[share]["loss_x"] + out[share]["loss_u"]).backward()
        grads[share] = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        del net.sam.encode
        labeled = batch_l["image"].shape[0] * (1 if script == "2d" else 4)
        assert log.sizes == [labeled, 2 * n if share else 3 * n], log.sizes   # student: labeled, unlabeled
    assert out[True]["loss_u"] > 0
    for key in ("loss_x", "loss_u", "mask_ratio"):
        torch.testing.assert_close(out[True][key], out[False][key], rtol=1e-5, atol=1e-6)
    assert grads[True].keys() == grads[False].keys() and any("dfe" in k for k in grads[True])
    for k in grads[True]:
        torch.testing.assert_close(grads[True][k], grads[False][k], rtol=1e-4, atol=1e-6, msg=k)


def test_weak_features_are_not_used_when_the_encoder_trains():
    net = make_net(make_config("2d", "-encoder_lr_mult", "1"))
    assert not make_method(net, net, make_config("2d", "-encoder_lr_mult", "1")).frozen_encoder
    frozen = copy.deepcopy(net).requires_grad_(False)
    assert make_method(frozen, frozen, make_config("2d", "-encoder_lr_mult", "0")).frozen_encoder
