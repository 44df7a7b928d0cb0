"""EMA teacher math, optimiser parameter groups, learning-rate schedules."""
import math

import pytest
import torch

from sam2_train.engine.ema import ModelEMA
from sam2_train.engine.schedule import OptimConf, build_optimizer, build_param_groups, build_scheduler, current_lrs


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 2, 4, 4))
        self.tokens = torch.nn.Embedding(3, 2)
        self.head = torch.nn.Linear(2, 2)
        self.drop = torch.nn.Dropout(0.5)
        self.norm = torch.nn.LayerNorm(2)

    def forward(self, x):
        return self.drop(self.head(self.norm(x)))


def ns(**kw):
    base = dict(lr=1e-3, weight_decay=0.05, encoder_lr_mult=0.1, sched="poly")
    base.update(kw)
    return OptimConf(**base)


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        for b in model.buffers():
            if b.is_floating_point():
                b.add_(1.0)


def test_ema_matches_formula_with_warmup_and_buffers():
    torch.manual_seed(0)
    student = Net()
    ema = ModelEMA(torch.nn.DataParallel(student), decay=0.9, warmup=True)  # wrappers are unwrapped
    assert not ema.module.training and all(not p.requires_grad for p in ema.module.parameters())
    expected = {k: v.clone() for k, v in ema.module.state_dict().items()}
    decays = []
    for step in range(4):
        perturb(student, step)
        d = ema.update(student)
        decays.append(d)
        sd = student.state_dict()
        for name, _ in student.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * sd[name]
        for name, _ in student.named_buffers():
            expected[name] = sd[name].clone()
        for k, v in ema.module.state_dict().items():
            torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6)
    assert decays == pytest.approx([0.0, 0.5, 2 / 3, 0.75])  # min(0.9, 1 - 1/(k+1))
    for _ in range(10):
        ema.update(student)
    assert ema.current_decay() == 0.9
    # eval-mode dropout: deterministic teacher output even after .train()
    ema.train()
    x = torch.randn(4, 2)
    assert torch.equal(ema(x), ema(x))


def test_ema_skips_parameters_the_student_does_not_train():
    torch.manual_seed(0)
    student = Net()
    student.image_encoder.requires_grad_(False)                  # e.g. -encoder_lr_mult 0
    ema = ModelEMA(student, decay=0.5, warmup=False)
    head0 = ema.module.head.weight.clone()
    perturb(student, 1)          # e.g. DDP broadcast rank 0's weights after the EMA copy was made
    ema.update(student)
    assert torch.equal(ema.module.image_encoder[0].weight, student.image_encoder[0].weight)   # first update: copied
    torch.testing.assert_close(ema.module.head.weight, 0.5 * head0 + 0.5 * student.head.weight)
    frozen1 = ema.module.image_encoder[0].weight.clone()
    with torch.no_grad():
        student.image_encoder[0].weight.add_(1.0)
    ema.update(student)
    assert torch.equal(ema.module.image_encoder[0].weight, frozen1)   # later: skipped (constant in training)
    # buffers are still copied
    torch.testing.assert_close(ema.module.image_encoder[1].running_mean, student.image_encoder[1].running_mean)


def test_ema_no_warmup_and_state_round_trip():
    student = Net()
    ema = ModelEMA(student, decay=0.75, warmup=False)
    w0 = ema.module.head.weight.clone()
    perturb(student, 1)
    assert ema.update(student) == 0.75
    torch.testing.assert_close(ema.module.head.weight, 0.75 * w0 + 0.25 * student.head.weight)
    other = ModelEMA(Net(), decay=0.75, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert other.step == 1 and torch.equal(other.module.head.weight, ema.module.head.weight)
    with pytest.raises(ValueError, match="not the same architecture"):
        ema.update(torch.nn.Linear(2, 2))


def test_param_groups_encoder_lr_and_no_decay():
    model = Net()
    opt = build_optimizer(model, ns())
    groups = {g["name"]: g for g in opt.param_groups}
    names = {id(p): n for n, p in model.named_parameters()}

    def members(g):
        return sorted(names[id(p)] for p in groups[g]["params"])
    assert members("encoder_decay") == ["image_encoder.0.weight"]
    assert members("encoder_no_decay") == ["image_encoder.0.bias", "image_encoder.1.bias", "image_encoder.1.weight"]
    assert members("other_decay") == ["head.weight"]
    assert members("other_no_decay") == ["head.bias", "norm.bias", "norm.weight", "pos_embed", "tokens.weight"]
    assert groups["encoder_decay"]["lr"] == pytest.approx(1e-4) and groups["other_decay"]["lr"] == 1e-3
    assert groups["encoder_no_decay"]["weight_decay"] == 0.0 and groups["other_decay"]["weight_decay"] == 0.05
    assert isinstance(opt, torch.optim.AdamW)
    model.head.weight.requires_grad_(False)  # frozen parameters are left out
    assert "other_decay" not in {g["name"] for g in build_param_groups(model, 1e-3, 0.05)}


def test_custom_encoder_predicate_and_given_groups():
    model = Net()
    opt = build_optimizer(model, ns(encoder_lr_mult=2.0), is_encoder=lambda n: n.startswith("head."))
    assert {g["name"]: g["lr"] for g in opt.param_groups}["encoder_decay"] == pytest.approx(2e-3)
    opt = build_optimizer([{"params": model.head.parameters()}], ns())
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["weight_decay"] == 0.05


def lr_factor(it, total, sched, warmup_iters=0):
    """The documented schedule, in closed form."""
    main = {"poly": (1 - it / total) ** 0.9, "cosine": 0.5 * (1 + math.cos(math.pi * it / total)), "none": 1.0}[sched]
    return main * ((it + 1) / (warmup_iters + 1) if it < warmup_iters else 1.0)


@pytest.mark.parametrize("sched, warmup_iters", [("poly", 0), ("poly", 4), ("cosine", 0), ("cosine", 3), ("none", 0),
                                                 ("none", 4)])
def test_torch_schedulers_follow_the_closed_form(sched, warmup_iters):
    """PolynomialLR / CosineAnnealingLR / ConstantLR chained with a LinearLR warm-up give lr * warm(it) * main(it)
    at every step up to the budget, ending at 0 (poly, cosine)."""
    opt = build_optimizer(Net(), ns())
    sched_ = build_scheduler(opt, ns(sched=sched, warmup_iters=warmup_iters), total_iters=20)
    lrs = []
    for _ in range(21):
        lrs.append(current_lrs(opt)["lr/other_decay"])
        opt.step()
        sched_.step()
    assert lrs == pytest.approx([1e-3 * lr_factor(i, 20, sched, warmup_iters) for i in range(21)], abs=1e-12)
    assert lrs[0] == pytest.approx(1e-3 / (warmup_iters + 1))
    if sched != "none":
        assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="-sched"):
        build_scheduler(opt, ns(sched="step"), total_iters=10)


def test_scheduler_steps_and_state_round_trip():
    model = Net()
    opt = build_optimizer(model, ns())
    sched = build_scheduler(opt, ns(sched="poly", warmup_iters=2), total_iters=20)
    lrs = []
    for _ in range(6):
        lrs.append(current_lrs(opt)["lr/other_decay"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-3 * lr_factor(i, 20, "poly", 2) for i in range(6)])
    enc = current_lrs(opt)["lr/encoder_decay"]
    assert enc == pytest.approx(1e-4 * lr_factor(6, 20, "poly", 2))
    state = sched.state_dict()
    opt2 = build_optimizer(Net(), ns())
    sched2 = build_scheduler(opt2, ns(sched="poly", warmup_iters=2), total_iters=20)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    for s, o in ((sched, opt), (sched2, opt2)):
        o.step()
        s.step()
    assert current_lrs(opt2) == pytest.approx(current_lrs(opt))
    assert current_lrs(opt)["lr/other_decay"] == pytest.approx(1e-3 * lr_factor(7, 20, "poly", 2))
    with pytest.raises(ValueError, match="total_iters"):
        build_scheduler(opt, ns(), total_iters=0)
