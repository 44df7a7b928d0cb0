"""The SAM-guided baselines and the U-Net recipe follow their papers and the authors' code (one test per rule):
the SAM-2 guide's input size and prompt scaling, Knowledge Mining's -lambda_u and labeled-only start, SAM-Match's
confidence source, prompts, CutMix labels and fine-tuned SAM-2, SemiSAM's point prompts and decaying weight,
SSL4MIS's SGD, dropout and consistency ramp-up."""
import contextlib
import json
import math
import os

import numpy as np
import pytest
import torch

from tests.test_students import build_student, config_for, demo_batches, method_of  # noqa: F401  (the fixture)
from tests.test_train_2d import TINY, run_dirs, run_train

import sam2_train.methods.unet.weak_to_strong as unet_w2s
from sam2_train.engine.ema import ModelEMA
from sam2_train.methods.base import rampup_weight
from sam2_train.methods.unet.semisam import sam_weight
from sam2_train.model.prompts import Prompts
from sam2_train.model.sam2_model import DecoderOutput
from sam2_train.model.sam_guide import SAMGuide, build_sam_guide, interior_point_prompts, largest_component_boxes


class FakeSAM(torch.nn.Module):
    """Stands in for SAM2Seg: records what the guide feeds it and returns mask logits ``logit_of(k)`` per class
    on SAM-2's low-res grid (guide_size / 4)."""

    def __init__(self, image_size, logit_of=lambda k: 0.0):
        super().__init__()
        self.image_size, self.logit_of, self.calls = image_size, logit_of, []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        self.calls.append({"image": x.shape})
        return x

    def decode(self, feats, boxes=None, box_valid=None, points=None, point_labels=None):
        n, k = box_valid.shape
        self.calls[-1].update(boxes=None if boxes is None else boxes.clone(), points=points.clone())
        s = self.image_size // 4
        masks = torch.stack([torch.full((n, s, s), float(self.logit_of(c))) for c in range(k)], 1) + self.w
        return DecoderOutput(masks=masks, ious=torch.zeros(n, k), object_scores=torch.zeros(n, k))


# ------------------------------------------------------------------ the guide runs at SAM-2's resolution
def test_guide_scales_a_hand_built_box_and_point_to_its_size_and_brings_masks_back():
    box, point = torch.tensor([[[2.0, 4.0, 6.0, 8.0]]]), torch.tensor([[[[10.0, 20.0]]]])
    prompts = Prompts(box, point, torch.ones(1, 1, 1, dtype=torch.int32), torch.ones(1, 1, dtype=torch.bool))
    fake = FakeSAM(256, logit_of=lambda k: 3.0)
    guide = SAMGuide(fake, contextlib.nullcontext)
    logits = guide.masks(torch.rand(1, 1, 64, 64), prompts)
    (call,) = fake.calls
    assert tuple(call["image"]) == (1, 1, 256, 256)                 # the image goes up to the guide's size
    assert call["boxes"][0, 0].tolist() == [8.0, 16.0, 24.0, 32.0]  # box edges x 256/64
    # a pixel index keeps its pixel centre: (10 + 0.5) x 4 - 0.5 = 41.5, (20 + 0.5) x 4 - 0.5 = 81.5
    assert call["points"][0, 0, 0].tolist() == [41.5, 81.5]
    assert tuple(logits.shape) == (1, 1, 64, 64) and torch.allclose(logits, torch.full_like(logits, 3.0))


def test_guide_is_built_at_guide_size_not_the_students():
    config = config_for("km_continuous", "unused", "unet", "-guide_size", "128")
    assert (config.model.image_size, config.model.guide_size) == (64, 128)
    guide = build_sam_guide(TINY, "none", config.model.guide_size, "cpu", contextlib.nullcontext)
    assert guide.image_size == 128


# ------------------------------------------------------------------ Knowledge Mining
def test_lambda_u_scales_km_onetime_unlabeled_loss(demo_batches):  # noqa: F811
    root, _, batch_l, batch_u = demo_batches
    u = {"image": batch_u["image_w"].flatten(0, 1), "label": torch.randint(0, 4, (4, 64, 64),
                                                                           generator=torch.Generator().manual_seed(0))}
    losses = {}
    for lam in ("1.0", "0.1"):
        torch.manual_seed(0)
        config = config_for("km_onetime", root, "unetpp", "-lambda_u", lam)
        net = build_student(config.model)
        net.eval()                                                  # no dropout: the two runs see the same net
        student = method_of(config)(net, config, teacher=ModelEMA(net).module)
        losses[lam] = float(student(batch_l, u, 100)["loss_u"].detach())
    assert losses["1.0"] > 0 and losses["0.1"] == pytest.approx(0.1 * losses["1.0"], rel=1e-5)


def test_km_pseudo_labeled_slice_weighs_lambda_u_times_a_ground_truth_one(demo_batches):  # noqa: F811
    """-lambda_u is relative to the labeled term 0.5 x (CE + Dice): the same slice as a pseudo-label at
    -lambda_u 0.5 weighs half what it weighs as ground truth (before, the two weighed the same)."""
    root, _, batch_l, _ = demo_batches
    torch.manual_seed(0)
    config = config_for("km_onetime", root, "unetpp", "-lambda_u", "0.5")
    net = build_student(config.model).eval()
    student = method_of(config)(net, config, teacher=ModelEMA(net).module)
    out = student(batch_l, dict(batch_l), 100)                  # the labeled batch again, as pseudo-labels
    assert float(out["loss_x"].detach()) > 0
    assert float(out["loss_u"].detach()) == pytest.approx(0.5 * float(out["loss_x"].detach()), rel=1e-5)


def test_unimatch_style_strong_views_weigh_a_quarter_each_against_loss_x(demo_batches, monkeypatch):  # noqa: F811
    """UniMatch's ACDC loss (loss_x + 0.25 s1 + 0.25 s2 + 0.5 fp) / 2 has no 0.5 fp stream here: the two strong
    views' Dice (one term over both) enters at 0.5 x lambda_u, i.e. 0.25 per view, against loss_x."""
    root, _, batch_l, batch_u = demo_batches
    seen = []

    def fake_heads_loss(heads, labels, valid=None, class_weight=None, ce_weight=1.0):
        seen.append(ce_weight)
        return torch.tensor(2.0)
    monkeypatch.setattr(unet_w2s, "heads_loss", fake_heads_loss)
    for lam in (1.0, 0.4):
        config = config_for("fixmatch", root, "unet", "-lambda_u", str(lam), "-rampup", "0")
        net = build_student(config.model).eval()
        out = method_of(config)(net, config, teacher=ModelEMA(net).module)(batch_l, batch_u, 10)
        assert float(out["loss_u"]) == pytest.approx(0.5 * lam * 2.0)
    assert seen == [0.0, 0.0]                                    # Dice alone on the strong views


class NoGuide:
    def masks(self, *a, **k):
        raise AssertionError("SAM-2 was asked for labels before -km_start")


def test_km_continuous_trains_on_labeled_data_only_before_km_start(demo_batches):  # noqa: F811
    root, _, batch_l, batch_u = demo_batches
    config = config_for("km_continuous", root, "unetpp", "-km_start", "50")
    assert config.method.km_start == 50 and config.method.km_agree == 0.0      # the -km_agree gate is off
    net, klass = build_student(config.model), method_of(config)
    out = klass(net, config, teacher=ModelEMA(net).module, guide=NoGuide())(batch_l, batch_u, 49)
    assert set(out) == {"loss", "loss_x"}
    guide = SAMGuide(FakeSAM(64, logit_of=lambda k: 5.0 if k == 0 else -5.0), contextlib.nullcontext)
    out = klass(net, config, teacher=ModelEMA(net).module, guide=guide)(batch_l, batch_u, 50)
    assert out["loss_u"] > 0 and "km_agree" not in out                      # no agreement gate by default


# ------------------------------------------------------------------ SAM-Match
def test_sammatch_prompts_are_boxes_of_the_largest_piece_of_the_argmax_widened_by_bbox_shift():
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[0, 2:5, 3:6] = 1                        # a small piece of class 1 ...
    labels[0, 10:20, 10:25] = 1                    # ... and its largest piece
    labels[0, 0:3, 28:32] = 2                      # at the border: clipped to the image
    labels[1, 5:8, 5:9] = 3
    p = largest_component_boxes(labels, 3, 5)
    assert p.valid.tolist() == [[True, True, False], [False, False, True]]
    assert p.boxes[0, 0].tolist() == [5, 5, 30, 25] and p.boxes[0, 1].tolist() == [23, 0, 32, 8]
    assert p.boxes[1, 2].tolist() == [0, 0, 14, 13]
    assert (p.point_labels == -1).all() and p.use_box                       # boxes only, no point


def _fixed_cutmix(monkeypatch, n):
    """CutMix with a known layout: every strong row pastes the left half of the next row of its view."""
    partner = torch.cat([torch.roll(torch.arange(n), -1), torch.roll(torch.arange(n), -1) + n])
    monkeypatch.setattr(unet_w2s, "sample_cutmix_partners", lambda m: torch.roll(torch.arange(m), -1))

    def boxes(m, size, p, device):
        box = torch.zeros(m, size, size, dtype=torch.bool)
        box[..., : size // 2] = True
        return box
    monkeypatch.setattr(unet_w2s, "sample_box_masks", boxes)
    return partner


def test_sammatch_confidence_is_the_teachers_and_sam_replaces_only_the_labels_outside_the_box(
        demo_batches, monkeypatch):  # noqa: F811
    root, _, batch_l, batch_u = demo_batches
    torch.manual_seed(0)
    net = build_student(config_for("sammatch", root).model)
    teacher = ModelEMA(net).module
    x_w = batch_u["image_w"].flatten(0, 1)
    with torch.no_grad():
        conf, t_labels = teacher(x_w).float().softmax(1).max(1)
    tau = float(conf.median())                                  # half the teacher's pixels are confident
    config = config_for("sammatch", root, "unet", "-tau_u", f"{tau:.6f}", "-sam_start", "0", "-guide_train", "0")
    # a SAM-2 sure of class 1 wherever it is prompted (sigmoid(30) = 1): its confidence would pass any threshold
    guide = SAMGuide(FakeSAM(64, logit_of=lambda k: 30.0 if k == 0 else -30.0), contextlib.nullcontext)
    n = x_w.shape[0]
    partner = _fixed_cutmix(monkeypatch, n)
    seen = {}
    real = unet_w2s.heads_loss
    monkeypatch.setattr(unet_w2s, "heads_loss", lambda heads, y, valid=None, **k: seen.update(y=y, ok=valid) or
                        real(heads, y, valid, **k))
    out = method_of(config)(net, config, teacher=teacher, guide=guide)(batch_l, batch_u, 10)
    conf2, t2 = torch.cat([conf, conf]), torch.cat([t_labels, t_labels])
    box = torch.zeros_like(seen["ok"])
    box[..., : box.shape[-1] // 2] = True
    expected_ok = torch.where(box, conf2[partner], conf2) >= config.semi.tau_u
    assert torch.equal(seen["ok"], expected_ok)                 # the confidence mask is the teacher's
    assert 0.3 < float(out["mask_ratio"]) < 0.7                 # not SAM-2's (which is 1 on every prompted row)
    prompted = (t2 == 1).flatten(1).any(1)                       # rows where the teacher's argmax has class 1
    outside = ~box & prompted[:, None, None]
    assert (seen["y"][outside] == 1).all()                       # outside the box: SAM-2's labels
    assert torch.equal(seen["y"][box], t2[partner][box])         # inside: the teacher's labels of the pasted image


def test_sammatch_fine_tunes_its_guide_and_the_run_keeps_it(demo_batches, tmp_path):  # noqa: F811
    root = demo_batches[0]
    common = ["-dataset", "demo", "-data_path", root, "-student", "unet", "-method", "sammatch", "-sam_config", TINY,
              "-image_size", "64", "-guide_size", "64", "-b", "2", "-b_u", "4", "-slab_len", "2", "-num_workers", "0",
              "-log_dir", str(tmp_path), "-val_volumes", "1", "-log_freq", "1", "-sam_start", "1"]
    r = run_train(common + ["-max_iters", "2", "-val_every", "2"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = run_dirs(tmp_path)[0]
    state = torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=True)
    assert set(state["extra"]["guide"]) == {"model", "optimizer"}
    assert len(state["extra"]["guide"]["optimizer"]["state"]) > 0  # SGD momentum buffers: the guide was stepped
    assert json.load(open(os.path.join(run, "config.json")))["method"]["guide_train"] is True
    r = run_train(common + ["-max_iters", "3", "-val_every", "3", "-resume_force", "1",
                            "-resume", os.path.join(run, "checkpoints", "last.pt")])
    assert r.returncode == 0, r.stderr[-2000:]
    again = torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=True)
    assert again["iteration"] == 3
    moved = [k for k, v in again["extra"]["guide"]["model"].items() if v.is_floating_point()
             and not torch.equal(v, state["extra"]["guide"]["model"][k])]
    assert moved                                                   # the resumed run went on fine-tuning it


# ------------------------------------------------------------------ SemiSAM
def test_semisam_prompts_are_points_inside_the_students_mask():
    probs = torch.zeros(1, 3, 16, 16)
    probs[:, 0] = 1.0
    probs[0, 0, 4:11, 2:9], probs[0, 1, 4:11, 2:9] = 0.0, 1.0     # class 1: a 7x7 square centred on (5, 7)
    p = interior_point_prompts(probs)
    assert p.valid.tolist() == [[True, False]] and not p.use_box
    assert p.points[0, 0, 0].tolist() == [5.0, 7.0] and p.point_labels[0, 0, 0] == 1
    fake = FakeSAM(16)
    SAMGuide(fake, contextlib.nullcontext).masks(torch.rand(1, 1, 16, 16), p)
    assert fake.calls[0]["boxes"] is None                           # SAM-2 sees the clicks only


def test_semisam_sam_weight_decreases_while_the_consistency_ramp_rises():
    config = config_for("semisam", "unused", "unet", "-max_iters", "1000")
    semi, total = config.semi, config.run.max_iters
    assert (config.method.sam_lambda, total, semi.rampup) == (0.05, 1000, 1000)
    ts = [0, 250, 500, 750, 1000]
    sam = [sam_weight(config.method.sam_lambda, t, total) for t in ts]
    ramp = [rampup_weight(semi, t) for t in ts]
    assert sam[0] == pytest.approx(0.05) and sam[-1] == pytest.approx(0.05 * math.exp(-5))
    assert all(a > b for a, b in zip(sam, sam[1:])) and all(a < b for a, b in zip(ramp, ramp[1:]))


# ------------------------------------------------------------------ SSL4MIS's U-Net recipe
def test_unet_student_has_ssl4mis_dropout_and_batch_norm():
    net = build_student(config_for("supervised", "unused").model)
    rates = {n: m.p for n, m in net.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0}
    assert list(rates.values()) == [0.05, 0.1, 0.2, 0.3, 0.5]       # one per encoder level, none in the decoder
    assert all("conv_0.adn" in n and "upcat" not in n for n in rates)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_sgd_optimiser_is_ssl4mis_s():
    from cfg import parse_config
    from sam2_train.engine.schedule import build_optimizer
    conf = parse_config(["-dataset", "acdc", "-student", "unet", "-method", "supervised"]).replace(
        model={"num_classes": 3})
    opt = build_optimizer(build_student(conf.model), conf.optim)
    assert isinstance(opt, torch.optim.SGD) and conf.optim.clip_grad == 0
    assert {(g["lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups} == {(0.01, 0.9, 1e-4)}
    assert np.isclose(sum(p.numel() for g in opt.param_groups for p in g["params"]),
                      sum(p.numel() for p in build_student(conf.model).parameters()))
