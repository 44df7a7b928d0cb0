"""Lightweight students (MONAI U-Net / U-Net++) and the SAM-guided baselines (Knowledge Mining, SemiSAM,
SAM-Match): prompts on hand-built maps, two training steps per method on demo data with a random SAM-2,
no gradient into SAM-2, one-time pseudo-labels cached and reused after a resume, flags that do not fit."""
import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_train_2d import ENV, ROOT, TINY, run_dirs, run_train

from cfg import parse_config
from dataset import DatasetError, build_datasets
from dataset.pseudo import PseudoLabelRef, pseudo_label_dataset
from sam2_train.engine.ema import ModelEMA
from sam2_train.evaluation.predict_student import predict_student as predict
from sam2_train.methods.networks import network
from sam2_train.methods.registry import method_class
from sam2_train.methods.unet.base import class_dice, heads_loss
from sam2_train.model.sam_guide import box_point_prompts, build_sam_guide
from sam2_train.model.students import UNetStudent

METHODS = ("supervised", "mean_teacher", "fixmatch", "km_onetime", "km_continuous", "semisam", "sammatch")


def build_student(model_conf):
    """The lightweight student of ``model_conf`` (random init), as the trainer builds it."""
    return network(model_conf.student).build(model_conf)


def method_of(config):
    """The registered method class of ``config`` (-method x -student x script)."""
    return method_class(config.semi.method, config.model.student, config.run.script)


def probs_from(fg: np.ndarray) -> torch.Tensor:
    """(N,K,H,W) foreground probabilities -> (N,K+1,H,W) with background = 1 - sum."""
    fg = torch.tensor(fg, dtype=torch.float32)
    return torch.cat([(1 - fg.sum(1, keepdim=True)).clamp_min(0), fg], 1)


# ------------------------------------------------------------------ prompts (Knowledge Mining's rule)
def test_prompt_box_is_the_outer_box_of_the_thresholded_mask_and_points_the_most_probable():
    fg = np.zeros((1, 2, 16, 16), np.float32)
    fg[0, 0, 3:7, 2:10] = 0.6            # class 1: a 4x8 block above the threshold ...
    fg[0, 0, 5, 4] = 0.9                 # ... with its two most probable pixels
    fg[0, 0, 6, 8] = 0.8
    fg[0, 0, 12, 12] = 0.4               # below the threshold: not in the box
    fg[0, 1, 10:12, 1:3] = 0.7           # class 2
    p = box_point_prompts(probs_from(fg), thresh=0.5, num_points=2)
    assert p.valid.tolist() == [[True, True]]
    assert p.boxes[0, 0].tolist() == [2, 3, 10, 7]           # x1, y1, x2 (exclusive), y2 (exclusive)
    assert p.boxes[0, 1].tolist() == [1, 10, 3, 12]
    assert p.points[0, 0].tolist() == [[4, 5], [8, 6]]       # xy, most probable first
    assert p.point_labels[0, 0].tolist() == [1, 1]


def test_prompt_of_an_absent_class_is_padding_and_small_masks_pad_their_points():
    fg = np.zeros((1, 2, 8, 8), np.float32)
    fg[0, 0, 2, 3] = 0.9                 # one pixel: the second point is padding
    p = box_point_prompts(probs_from(fg), thresh=0.5, num_points=2)
    assert p.valid.tolist() == [[True, False]]
    assert p.point_labels[0].tolist() == [[1, -1], [-1, -1]]
    assert p.points[0, 0, 0].tolist() == [3, 2]


def test_prompt_ties_are_broken_at_random_with_a_seed():
    fg = np.zeros((1, 1, 16, 16), np.float32)
    fg[0, 0, 4:12, 4:12] = 0.8           # 64 pixels of equal probability
    probs = probs_from(fg)

    def pick(seed):
        return box_point_prompts(probs, num_points=3, generator=torch.Generator().manual_seed(seed)).points
    a, b = pick(0), pick(0)
    assert torch.equal(a, b)                                  # reproducible
    assert any(not torch.equal(a, pick(s)) for s in range(1, 6))   # not always the same pixels
    for s in range(6):                                        # always inside the tied region
        pts = pick(s)[0, 0]
        assert ((pts >= 4) & (pts < 12)).all()
        assert len({tuple(q) for q in pts.tolist()}) == 3


def test_prompt_needs_the_argmax_too():
    fg = np.zeros((1, 2, 8, 8), np.float32)
    fg[0, 0, 2:4, 2:4] = 0.5             # class 1 at the threshold but class 2 is the argmax
    fg[0, 1, 2:4, 2:4] = 0.5001
    p = box_point_prompts(probs_from(fg), thresh=0.5, num_points=1)
    assert p.valid.tolist() == [[False, True]]


def test_class_dice_per_image_and_class():
    a = torch.tensor([[[1, 1, 0, 2]]])
    b = torch.tensor([[[1, 0, 0, 0]]])
    d = class_dice(a, b, 3)
    assert d[0].tolist() == pytest.approx([2 / 3, 0.0, 1.0])


# ------------------------------------------------------------------ two steps per method
@pytest.fixture(scope="module")
def demo_batches(tmp_path_factory):
    from dataset.demo import ensure_demo
    root = ensure_demo(str(tmp_path_factory.mktemp("data") / "demo_acdc"), "acdc", seed=0)
    config = parse_config(["-dataset", "demo", "-data_path", root, "-student", "unet", "-method", "fixmatch",
                           "-image_size", "64", "-b", "2", "-b_u", "4", "-slab_len", "2", "-num_workers", "0"])
    splits = build_datasets(config.data, "2d", image_size=config.model.image_size, seed=config.run.seed)
    batch_l = {"image": torch.stack([splits.labeled[i]["image"] for i in range(2)]),
               "label": torch.stack([splits.labeled[i]["label"] for i in range(2)])}
    slabs = [splits.unlabeled[i] for i in (0, len(splits.unlabeled) // 2)]
    batch_u = {k: torch.stack([s[k] for s in slabs]) for k in ("image_w", "image_s1", "image_s2")}
    return root, splits, batch_l, batch_u


def config_for(method, root, student="unet", *extra):
    config = parse_config(["-dataset", "demo", "-data_path", root, "-student", student, "-method", method,
                           "-sam_config", TINY, "-image_size", "64", "-b", "2", "-b_u", "4", "-slab_len", "2",
                           "-max_iters", "4", "-tau_u", "0.0", "-km_thresh", "0.3", "-guide_size", "64", *extra],
                          script="2d")
    return config.replace(model={"num_classes": 3})


@pytest.mark.parametrize("method", METHODS)
def test_each_method_runs_two_steps_and_no_gradient_reaches_sam(method, demo_batches):
    root, _, batch_l, batch_u = demo_batches
    torch.manual_seed(0)
    config = config_for(method, root, "unetpp" if method.startswith("km") else "unet")
    net = build_student(config.model)
    teacher = ModelEMA(net, 0.99).module
    klass = method_of(config)
    guide = (build_sam_guide(TINY, "none", 64, "cpu", contextlib.nullcontext, trainable=klass.guide_trainable(config))
             if klass.needs_guide else None)
    if guide is not None:
        sam_before = {k: v.clone() for k, v in guide.sam.state_dict().items()}
    student = klass(net, config, teacher=teacher, guide=guide)
    assert not any(n.startswith("_") for n, _ in student.named_modules() if n)   # SAM-2 is not a submodule
    assert all(not k.startswith("sam") for k in student.state_dict())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in net.parameters()]
    if method == "km_onetime":   # after -km_start the unlabeled batch is pseudo-labeled slices
        u = {"image": batch_u["image_w"].flatten(0, 1), "label": torch.randint(0, 4, (4, 64, 64))}
    else:
        u = None if method == "supervised" else batch_u
    for it in range(2):
        out = student(batch_l, u, it + 100)
        assert torch.isfinite(out["loss"])
        if u is not None:
            assert out["loss_u"].requires_grad and float(out["loss_u"].detach()) > 0
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    if guide is not None and method == "sammatch":   # SAM-Match fine-tunes its SAM-2 (-guide_train 1, its default)
        assert guide.trainable and "loss_guide" in out and "loss_u_w_sam" in out
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.sam.parameters())
    elif guide is not None:                           # the other SAM-guided methods keep it frozen
        assert all(p.grad is None and not p.requires_grad for p in guide.sam.parameters())
        assert all(torch.equal(v, sam_before[k]) for k, v in guide.sam.state_dict().items())
    if method == "semisam":
        assert "l_sam" in out
    if method in ("sammatch", "semisam"):
        assert "sam_prompted" in out


def test_heads_loss_dice_alone_on_hand_built_maps():
    """ce_weight=0 leaves the soft Dice of the valid pixels (per class over the batch, background included),
    computed here by hand; the default ce_weight=1 adds the mean CE of the valid pixels."""
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [3.0, 0.0]]]])          # (1,2,2,2)
    labels = torch.tensor([[[0, 1], [1, 1]]])
    valid = torch.tensor([[[True, True], [True, False]]])
    p = logits.softmax(1)[0]                                                                 # (2,2,2)
    v = valid[0].float()
    dice = []
    for c in range(2):
        y = (labels[0] == c).float() * v
        pc = p[c] * v
        dice.append(1 - (2 * (pc * y).sum() + 1e-5) / (pc.sum() + y.sum() + 1e-5))
    dice = sum(dice) / 2
    ce = -(torch.log(p[labels[0], torch.arange(2)[:, None], torch.arange(2)[None]]) * v).sum() / v.sum()
    assert torch.allclose(heads_loss([logits], labels, valid, ce_weight=0.0), dice, atol=1e-6)
    assert torch.allclose(heads_loss([logits], labels, valid), dice + ce, atol=1e-6)


def test_unimatch_style_strong_views_train_on_dice_alone(demo_batches, monkeypatch):
    """The strong views of fixmatch / sammatch are trained as UniMatch's ACDC code does: Dice on the teacher's
    confident pixels, no CE (with CE, an early teacher sure only of background pulls a U-Net to background)."""
    import sam2_train.methods.unet.base as unet_base
    import sam2_train.methods.unet.weak_to_strong as unet_w2s
    root, _, batch_l, batch_u = demo_batches
    torch.manual_seed(0)
    config = config_for("fixmatch", root)
    net = build_student(config.model)
    student = method_of(config)(net, config, teacher=ModelEMA(net, 0.99).module)
    calls = []
    real = unet_base.heads_loss
    def record(*a, **k):
        calls.append(k.get("ce_weight", 1.0))
        return real(*a, **k)
    for module in (unet_base, unet_w2s):        # the labeled loss and the strong views' loss
        monkeypatch.setattr(module, "heads_loss", record)
    out = student(batch_l, batch_u, 100)
    assert calls == [1.0, 0.0]                         # labeled CE + Dice, then the strong views' Dice alone
    assert torch.isfinite(out["loss_u"]) and out["loss_u"].requires_grad


def test_unetpp_trains_on_every_deep_supervision_head():
    net = UNetStudent("unetpp", 3, 64)
    x = torch.rand(2, 1, 64, 64)
    heads = net.heads(x)
    assert len(heads) == 4 and all(h.shape == (2, 4, 64, 64) for h in heads)
    assert torch.equal(net(x), heads[-1])                    # the evaluated output is the last head
    assert len(UNetStudent("unet", 3, 64).heads(x)) == 1


def test_students_run_channels_last_with_the_same_outputs():
    """Conv weights stay channels-last (oneDNN/cuDNN's fast path) through an EMA copy and a state-dict load, and
    the output is that of the same weights in the default layout."""
    torch.manual_seed(0)
    net = UNetStudent("unet", 3, 64)
    convs = [p for p in net.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert sum(not p.is_contiguous() for p in convs) > len(convs) // 2     # not only the ambiguous 1x1/1-channel ones
    copy = UNetStudent("unet", 3, 64)
    copy.load_state_dict(ModelEMA(net).module.state_dict())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in copy.parameters() if p.dim() == 4)
    x = torch.rand(2, 1, 64, 64)
    plain = UNetStudent("unet", 3, 64)
    plain.net.to(memory_format=torch.contiguous_format)
    plain.load_state_dict(net.state_dict())
    net.eval(), plain.eval()                                  # dropout off, BatchNorm on its running statistics
    with torch.no_grad():
        assert torch.allclose(net(x), plain.net(x), atol=1e-5)


def test_predict_is_label_free_in_both_modes(demo_batches):
    root, splits, _, _ = demo_batches
    config = config_for("km_continuous", root)
    net = build_student(config.model).eval()
    guide = build_sam_guide(TINY, "none", 64, "cpu", contextlib.nullcontext)
    image = np.asarray(splits.val[0]["image"])
    none = contextlib.nullcontext
    a = predict(net, image, config=config, infer="student", device="cpu", autocast=none)
    b = predict(net, image, config=config, infer="sam_refine", device="cpu", autocast=none, guide=guide)
    c = predict(net, image, config=config, infer="sam_refine", device="cpu", autocast=none, guide=guide)
    assert a.shape == b.shape == image.shape and a.dtype == np.int64
    assert np.array_equal(b, c)                      # seeded ties: the same labels twice
    assert set(np.unique(b)) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="frozen SAM-2"):
        predict(net, image, config=config, infer="sam_refine", device="cpu", autocast=none)


# ------------------------------------------------------------------ one-time pseudo-labels
def test_pseudo_label_cache_is_written_once_and_read_back(demo_batches, tmp_path):
    _, splits, _, _ = demo_batches
    refs, calls = splits.unlabeled.refs[:2], []

    def label(image):
        calls.append(image.shape)
        return (image > 0.5).astype(np.int64)

    ds = pseudo_label_dataset(str(tmp_path), refs, label, 64, seed=0, iteration=7, log=lambda m: None)
    assert len(calls) == 2 and len(ds) == sum(r.num_slices() for r in refs)
    manifest = json.load(open(tmp_path / "pseudo" / "manifest.json"))
    assert manifest["volumes"] == [r.name for r in refs] and manifest["iteration"] == 7
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and item["label"].shape == (64, 64)
    img, lab, _, _ = ds.items[0][0].load()
    assert np.array_equal(lab, (img > 0.5).astype(np.int64))       # the label is the one written
    msgs = []
    again = pseudo_label_dataset(str(tmp_path), refs, label, 64, seed=0, iteration=9, log=msgs.append)
    assert len(calls) == 2 and "reusing" in msgs[0] and len(again) == len(ds)


def test_corrupt_pseudo_label_names_the_file(demo_batches, tmp_path):
    _, splits, _, _ = demo_batches
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="x.npz"):
        PseudoLabelRef(splits.unlabeled.refs[0], str(bad)).load()


def test_km_onetime_labels_once_and_a_resume_reuses_the_labels(demo_batches, tmp_path):
    root = demo_batches[0]
    log_dir = tmp_path / "logs"
    common = ["-dataset", "demo", "-data_path", root, "-student", "unet", "-method", "km_onetime",
              "-sam_config", TINY, "-image_size", "64", "-b", "2", "-b_u", "2", "-num_workers", "0",
              "-log_dir", str(log_dir), "-val_volumes", "1", "-log_freq", "1", "-km_start", "1"]
    r = run_train(common + ["-max_iters", "2", "-val_every", "2"])
    assert r.returncode == 0, r.stderr[-2000:]
    run = run_dirs(log_dir)[0]
    folder = os.path.join(run, "pseudo")
    files = {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)}
    assert "manifest.json" in files and len(files) == 17          # 16 unlabeled volumes + manifest
    log = open(os.path.join(run, "train.log")).read()
    assert "labeled 16 volumes at iteration 1" in log
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert set(summary["by_infer"]) == {"student", "sam_refine"}
    r = run_train(common + ["-max_iters", "3", "-val_every", "3", "-resume_force", "1",
                            "-resume", os.path.join(run, "checkpoints", "last.pt")])
    assert r.returncode == 0, r.stderr[-2000:]
    log = open(os.path.join(run, "train.log")).read()
    assert "reusing the 16 volumes" in log
    assert {f: os.path.getmtime(os.path.join(folder, f)) for f in os.listdir(folder)} == files
    ev = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "-ckpt",
                         os.path.join(run, "checkpoints", "last.pt"), "-split", "val", "-infer", "sam_refine",
                         "-max_volumes", "1", "-log_dir", str(tmp_path / "ev"), "-device", "cpu"],
                        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    out = json.load(open(os.path.join(run_dirs(tmp_path / "ev")[0], "summary.json")))
    assert out["infer"] == "sam_refine"
    assert 0.0 <= out["dice"]["mean"] <= 1.0


# ------------------------------------------------------------------ flags
@pytest.mark.parametrize("argv, message", [
    (["-method", "km_onetime"], "-student unet"),
    (["-method", "mean_teacher"], "-student unet"),
    (["-student", "unet", "-method", "sss"], "-student sam2"),
    (["-student", "unet", "-method", "supervised", "-infer", "pcsw"], "does not fit"),
    (["-student", "sam2", "-method", "sss", "-infer", "sam_refine"], "does not fit"),
    (["-student", "unet", "-method", "supervised", "-compile", "1"], "image encoder"),
    (["-student", "unet", "-method", "km_continuous", "-guide_train", "1"],
     "-guide_train is a setting of -method sammatch"),
    (["-student", "unet", "-method", "sammatch", "-guide_size", "100"], "multiple of 32"),
])
def test_flags_that_do_not_fit_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(["-dataset", "demo", *argv], script="2d")
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_light_student_defaults():
    """The U-Net rows train on SSL4MIS's recipe (256 px, 12 slices, SGD 0.01 poly, no clipping), the SAM-2 guide
    runs at 1024 px, and each SAM-guided method gets its paper's defaults."""
    a = parse_config(["-dataset", "acdc", "-student", "unetpp", "-method", "semisam"], script="2d")
    assert (a.model.image_size, a.run.batch_size, a.optim.lr, a.optim.optim, a.optim.clip_grad, a.infer.infer,
            a.semi.lambda_u, a.model.dfe) == (256, 12, 1e-2, "sgd", 0.0, "student", 0.1, False)
    assert not hasattr(a.method, "pcsw")                                      # no PCSW for a lightweight student
    assert (a.model.guide_size, a.semi.rampup, method_of(a).guide_trainable(a)) == (1024, 30000, False)   # ramp
    for method in ("km_onetime", "km_continuous"):   # labeled only for the first half, then lambda_u 0.5, no gate
        k = parse_config(["-dataset", "acdc", "-student", "unet", "-method", method])
        assert (k.method.km_start, k.semi.lambda_u, getattr(k.method, "km_agree", 0.0),
                method_of(k).guide_trainable(k)) == (15000, 0.5, 0.0, False)
    m = parse_config(["-dataset", "acdc", "-student", "unet", "-method", "sammatch"])
    assert (m.method.sam_start, m.method.bbox_shift, m.method.guide_train, m.method.guide_lr, m.semi.lambda_u,
            method_of(m).guide_trainable(m)) == (15000, 5, True, 5e-4, 1.0, True)
    s = parse_config(["-dataset", "acdc", "-method", "fixmatch"], script="2d")
    assert (s.model.image_size, s.semi.lambda_u, s.infer.infer, s.optim.optim, s.optim.clip_grad) == (
        1024, 1.0, "pcsw", "adamw", 1.0)
    c = a.replace(model={"num_classes": 3})
    assert c.model.student == "unetpp" and c.method.sam_lambda == 0.05 and c.infer.km_points == 1
    assert (c.model.guide_size, c.optim.optim, c.run.max_iters) == (1024, "sgd", 30000)   # L_sam decays over it
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_3d.py"), "-student", "unet", "-method", "supervised"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "train_2d.py" in r.stderr and "Traceback" not in r.stderr
