"""3D (slice-sequence) pipeline on CPU with the tiny SAM-2 config at 64 px: a labeled clip trains, streamed
label-free volume inference (any depth, bounded memory, no labels, orientation), train_3d.py + evaluate.py
end to end on generated BHSD-format phantoms."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests._model_fixtures import TEST_CFG, make_informative
from tests.test_train_2d import run_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
BHSD_CLASSES = ["EDH", "IPH", "IVH", "SAH", "SDH"]


@pytest.fixture(scope="module")
def bhsd_root(tmp_path_factory):
    from dataset.demo import ensure_demo
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "demo_bhsd"), "bhsd", seed=0)


def make_config(*extra):
    import cfg
    config = cfg.parse_config(["-dataset", "demo", "-sam_config", TEST_CFG, "-image_size", "64", "-video_length", "4",
                               "-num_workers", "0", *extra], script="3d")
    return config.replace(model={"num_classes": len(BHSD_CLASSES)})


def make_net(config, seed=0, informative=True):
    from sam2_train.model.sss_net import build_sss_net
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        net = build_sss_net(config.model)
    if informative:
        make_informative(net.sam.sam)  # objects "present" at init, so tracked masks carry gradients
    return net


def blob_volume(d, h, w, z0, z1, value=0.9, seed=0):
    """(d,h,w) float in [0,1]: a head-like disk (0.35) with a bright blob on slices [z0, z1) moving slowly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    head = ((yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.4 * w) ** 2) < 1
    vol = np.where(head, 0.35, 0.0)[None].repeat(d, 0) + rng.normal(0, 0.01, (d, h, w))
    for z in range(z0, z1):
        cy, cx = h * (0.4 + 0.1 * (z - z0) / max(1, z1 - z0)), w * 0.55
        vol[z][((yy - cy) / (0.12 * h)) ** 2 + ((xx - cx) / (0.12 * w)) ** 2 < 1] = value
    return vol.clip(0, 1).astype(np.float32)


def intensity_coarse_head(net, cls=2, thresh=0.7):
    """Test double for the coarse head: class ``cls`` where the frame is brighter than ``thresh``.

    Wraps ``net.encode`` to remember the frames last encoded (the head's input features come from them),
    so PCSW gets a confident, slice-continuous structure from a random-weight model.
    """
    seen, encode = {}, net.encode

    def enc(images):
        seen["x"] = images
        return encode(images)

    def coarse(feats):
        x = seen["x"][:, 0].float()
        s = feats[0].shape[-1]
        fg = F.adaptive_avg_pool2d(x[:, None], s)[:, 0] > thresh
        logits = torch.full((x.shape[0], net.num_classes + 1, s, s), -10.0)
        logits[:, 0] = 10.0 * (~fg).float()
        logits[:, cls] = 10.0 * fg.float()
        return logits

    net.encode, net.coarse = enc, coarse
    return net


def make_step(net, config):
    """The 3D training step of ``config``'s method (the teacher is ``net`` itself)."""
    from sam2_train.methods.registry import method_class
    return method_class(config.semi.method, config.model.student, config.run.script)(net, config, teacher=net)


def predictor(net, config):
    from sam2_train.engine.device import autocast
    from sam2_train.methods.networks import network
    return lambda img, sp: network("sam2").predict(net, img, config=config, infer=config.infer.infer,  # noqa: E731
                                                   device=torch.device("cpu"), autocast=lambda: autocast("cpu", "off"))


# ------------------------------------------------------------------------------------------------ training
def test_thin_prompt_frames_and_clip_partners():
    from sam2_train.model.cutmix import clip_cutmix_partners
    from sam2_train.model.prompts import thin_prompt_frames
    valid = torch.tensor([[[0, 0], [1, 0], [1, 1], [0, 1], [1, 0], [0, 1]]], dtype=torch.bool)
    assert thin_prompt_frames(valid, 1) is valid
    kept = thin_prompt_frames(valid, 2)[0]      # per class: its prompted frames of rank 0, 2, ...
    assert kept.tolist() == [[False, False], [True, False], [False, True], [False, False], [True, False],
                             [False, True]]
    late = valid.clone()
    late[0, :, 1] = False
    late[0, 5, 1] = True                        # class 1 prompted on the last frame only: kept (rank 0)
    assert thin_prompt_frames(late, 3)[0].tolist() == [[False, False], [True, False], [False, False],
                                                      [False, False], [False, False], [False, True]]
    assert clip_cutmix_partners(1, 5).tolist() == [4, 3, 2, 1, 0]              # one clip: reversed in time
    p = clip_cutmix_partners(3, 4).view(3, 4)
    assert (p % 4 == torch.arange(4)).all() and ((p // 4) != torch.arange(3)[:, None]).all()


def test_labeled_clip_loss_falls():
    """10 optimiser steps on one fixed labeled clip (ground-truth boxes on frames 0 and 2) lower the loss."""
    config = make_config("-p_gt", "1", "-prompt", "bbox", "-prompt_freq", "2", "-method", "supervised")
    net = make_net(config)
    assert net.sam.sam.max_cond_frames_in_attn == config.model.memory_bank_size == 16     # -memory_bank_size in 3D
    student = make_step(net, config)
    vol = torch.from_numpy(blob_volume(4, 64, 64, 0, 3))[:, None][None]            # (1,4,1,64,64)
    label = (vol[:, :, 0] > 0.7).long() * 2                                         # IPH on frames 0..2
    label[:, 1:3, 40:48, 10:20] = 4                                                 # SAH on frames 1, 2
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    torch.manual_seed(0)
    for _ in range(10):
        out = student({"image": vol, "label": label}, None, 0)
        assert set(out) == {"loss", "loss_x"} and out["loss_x"].requires_grad
        opt.zero_grad()
        out["loss_x"].backward()
        opt.step()
        losses.append(float(out["loss_x"].detach()))
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


def test_step_returns_all_terms_and_skips_unprompted_clips():
    """sss step with an unlabeled clip: same keys as 2D; a labeled clip without any prompt (no GT class,
    p_gt=1) keeps only the coarse term (no tracking)."""
    config = make_config("-p_gt", "1", "-b_u", "1", "-pcsw_fallback", "0")
    net = make_net(config)
    vol = torch.from_numpy(blob_volume(4, 64, 64, 1, 2))[:, None][None]
    batch_l = {"image": vol, "label": torch.zeros_like(vol[:, :, 0], dtype=torch.long)}   # no class: no prompt
    batch_u = {key: vol.clone() for key in ("image_w", "image_s1", "image_s2")}
    calls = []
    track = net.sam.track
    net.sam.track = lambda *a, **kw: calls.append(1) or track(*a, **kw)
    out = make_step(net, config)(batch_l, batch_u, 0)
    rates = {f"pcsw_{r}_{c}" for r in ("accept", "fallback", "reject") for c in range(1, net.num_classes + 1)}
    assert set(out) == {"loss", "loss_x", "loss_u", "mask_ratio"} | rates
    assert all(torch.is_tensor(v) and torch.isfinite(v) for v in out.values())
    assert all(float(out[r]) == 0.0 for r in rates if "fallback" in r)          # -pcsw_fallback 0
    out["loss"].backward()
    # the labeled clip had no prompt -> not tracked; the random teacher has no PCSW prompt (no fallback) -> not
    # tracked
    assert calls == []


# ------------------------------------------------------------------------------------------------ inference
@pytest.mark.parametrize("depth", [24, 60])
def test_streamed_inference_any_depth_bounded_memory(depth, monkeypatch):
    from sam2_train.model.sam2_model import SAM2GroupTracker
    config = make_config("-prompt_freq", "2")
    net = intensity_coarse_head(make_net(config))
    vol = blob_volume(depth, 80, 96, depth // 3, depth // 3 + 8)
    batches = []
    enc = net.encode
    net.encode = lambda images: batches.append(images.shape[0]) or enc(images)
    held = []
    step = SAM2GroupTracker.step

    def recording_step(self, frame_idx, feats, reverse=False):
        out = step(self, frame_idx, feats, reverse)
        nc = self.output_dict["non_cond_frame_outputs"]
        held.append((sum("maskmem_features" in e for e in nc.values()), len(nc),
                     len(self.output_dict["cond_frame_outputs"]), self.mem_window, self.ptr_window))
        return out

    monkeypatch.setattr(SAM2GroupTracker, "step", recording_step)
    pred = predictor(net, config)(vol, (5.0, 0.5, 0.5))
    assert pred.shape == (depth, 80, 96) and pred.dtype == np.int64
    assert set(np.unique(pred)) <= {0, 2} and (pred == 2).any()
    # each frame encoded exactly twice: once in pass 1 (chunks <= 8), once in pass 2 (prompt frames in
    # chunks, the rest one at a time)
    assert sum(batches) == 2 * depth and max(batches) <= 8
    n_cond = held[0][2]
    assert 1 <= n_cond <= 4                                   # 8 PCSW slices thinned to every 2nd
    assert batches.count(1) >= depth - n_cond
    assert len(held) == depth - n_cond                        # one step per non-prompt frame
    for spatial, entries, cond, mem_window, ptr_window in held:
        assert spatial <= mem_window + 1 and entries <= max(mem_window, ptr_window) + 1 and cond == n_cond
    assert max(h[1] for h in held) < depth or depth <= 17


def test_no_prompt_gives_background():
    """A random model (no PCSW prompt accepted) and a volume without hemorrhage give all background, without
    fallback and fusion; with fusion, a volume without any prompt is the coarse head's argmax."""
    config = make_config("-pcsw_fallback", "0", "-pcsw_fuse", "0")
    net = make_net(config, informative=False)
    vol = blob_volume(24, 64, 64, 0, 0)
    assert (predictor(net, config)(vol, None) == 0).all()
    fused = predictor(net, make_config("-pcsw_fallback", "0"))(vol, None)
    coarse = predictor(net, make_config("-infer", "coarse"))(vol, None)
    assert (coarse > 0).any() and np.array_equal(fused, coarse)
    net = intensity_coarse_head(make_net(config))
    empty = blob_volume(30, 64, 64, 0, 0)
    assert (predictor(net, config)(empty, (5.0, 0.5, 0.5)) == 0).all()


def test_predictions_do_not_depend_on_labels(bhsd_root):
    """The evaluation loop gives the predictor the image only: replacing every label changes nothing."""
    from dataset import build_datasets
    from sam2_train.evaluation.loop import evaluate_volumes
    config = make_config("-data_path", bhsd_root)
    net = intensity_coarse_head(make_net(config), thresh=0.8)
    splits = build_datasets(config.data, "3d", image_size=config.model.image_size, seed=config.run.seed)
    assert list(splits.class_names) == BHSD_CLASSES
    vols = [splits.val[0]]
    fake = [dict(v, label=np.random.default_rng(0).integers(0, 6, np.shape(v["label"]))) for v in vols]
    predict = predictor(net, config)
    real = evaluate_volumes(vols, predict, BHSD_CLASSES, protocol="volume", split="val", keep_predictions=True,
                            progress=False)
    swapped = evaluate_volumes(fake, predict, BHSD_CLASSES, protocol="volume", split="val", keep_predictions=True,
                               progress=False)
    assert any(p.any() for p in real.predictions.values())
    for name, pred in real.predictions.items():
        np.testing.assert_array_equal(pred, swapped.predictions[name])
    assert real.summary["dice"] != swapped.summary["dice"]


def test_orientation_end_to_end(tmp_path):
    """The same volume stored with flipped axes (LPI voxel order) reads back canonical and gives the same
    prediction; the saved prediction NIfTI lies on the same world grid as the image."""
    import nibabel as nib
    from dataset.io import read_nifti
    from dataset.io import prediction_writer
    config = make_config()
    net = intensity_coarse_head(make_net(config))
    vol = blob_volume(20, 48, 56, 5, 13)                                           # (z,y,x) canonical RAS
    xyz = vol.transpose(2, 1, 0)
    ras = np.diag([0.5, 0.5, 5.0, 1.0])
    nib.save(nib.Nifti1Image(xyz, ras), str(tmp_path / "ras.nii.gz"))
    flip = ras.copy()                                   # x, y, z stored reversed (LPI): same world positions
    flip[:3, :3] *= -1
    flip[:3, 3] = ras[:3, :3] @ (np.array(xyz.shape) - 1)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(xyz[::-1, ::-1, ::-1]), flip), str(tmp_path / "lpi.nii.gz"))
    preds = []
    for name in ("ras", "lpi"):
        img, spacing, affine = read_nifti(str(tmp_path / f"{name}.nii.gz"))
        np.testing.assert_allclose(img, vol)
        preds.append(predictor(net, config)(img, spacing))
        src = str(tmp_path / f"{name}.nii.gz")
        prediction_writer(str(tmp_path / "pred"))({"name": name, "affine": affine, "source": src}, preds[-1])
        prediction_writer(str(tmp_path / "canon"))({"name": name, "affine": affine}, preds[-1])
    np.testing.assert_array_equal(preds[0], preds[1])
    assert (preds[0] == 2).any()
    # with the source file: its grid (voxel order, affine), so the prediction compares voxel-wise with it
    saved = nib.load(str(tmp_path / "pred" / "lpi.nii.gz"))
    np.testing.assert_allclose(saved.affine, flip)
    assert saved.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asanyarray(saved.dataobj), preds[1].transpose(2, 1, 0)[::-1, ::-1, ::-1])
    # without it (affine only): the canonical grid the loader produced
    canon = nib.load(str(tmp_path / "canon" / "lpi.nii.gz"))
    np.testing.assert_allclose(canon.affine, nib.as_closest_canonical(nib.load(str(tmp_path / "lpi.nii.gz"))).affine)
    np.testing.assert_array_equal(np.asanyarray(canon.dataobj).transpose(2, 1, 0), preds[1])


# ------------------------------------------------------------------------------------------------ CLI
def test_train_3d_and_evaluate_cli(bhsd_root, tmp_path):
    log_dir = tmp_path / "logs"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train_3d.py"), "-dataset", "demo", "-data_path", bhsd_root,
                        "-sam_config", TEST_CFG, "-image_size", "64", "-video_length", "4", "-max_iters", "3",
                        "-num_workers", "0", "-log_dir", str(log_dir), "-log_freq", "1", "-val_volumes", "1",
                        "-val_freq", "1000"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(str(log_dir))
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["protocol"] == "volume" and summary["split"] == "test" and summary["distance_units"] == "mm"
    for metric in ("dice", "hd95", "asd"):
        assert set(summary[metric]) == {*BHSD_CLASSES, "mean"}
    assert "test Dice, infer pcsw:" in r.stdout + r.stderr
    assert os.path.isfile(os.path.join(run, "vis", "summary.png"))
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["run"]["script"] == "3d" and config["data"]["video_length"] == 4
    # the demo's own split (splits/*.txt: 7 train / 1 val / 4 test); val never overlaps test
    splits = json.load(open(os.path.join(run, "splits.json")))
    assert len(splits["labeled"]) == 7 and len(splits["val"]) == 1 and len(splits["test"]) == 4
    assert not set(splits["val"]) & set(splits["test"])
    assert not set(splits["val"]) & set(splits["labeled"] + splits["unlabeled"])

    out_dir = tmp_path / "eval"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "-ckpt",
                        os.path.join(run, "checkpoints", "best.pt"), "-split", "test", "-save_pred",
                        "-max_volumes", "1", "-log_dir", str(out_dir)], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (ev,) = [os.path.join(out_dir, d) for d in os.listdir(out_dir)]
    assert json.load(open(os.path.join(ev, "summary.json")))["split"] == "test"
    (pred,) = os.listdir(os.path.join(ev, "predictions"))
    assert pred.endswith(".nii.gz")
    import nibabel as nib
    src = [os.path.join(dp, f) for dp, _, fs in os.walk(bhsd_root) for f in fs if f == pred and "images" in dp]
    assert src, pred
    image = nib.load(src[0])               # BHSD-like header: qfac -1, x stored flipped
    saved = nib.load(os.path.join(ev, "predictions", pred))
    assert saved.shape == image.shape and np.allclose(saved.affine, image.affine)
    assert int(saved.header["qform_code"]) == int(image.header["qform_code"]) == 1
    assert saved.header["pixdim"][0] == image.header["pixdim"][0] == -1


def test_encoder_lr_mult_zero_freezes_the_image_encoder():
    from sam2_train.engine.schedule import build_optimizer
    for mult, frozen in (("0", True), ("0.5", False)):
        config = make_config("-encoder_lr_mult", mult)
        net = make_net(config, informative=False)
        enc = list(net.sam.sam.image_encoder.parameters())
        assert all(p.requires_grad != frozen for p in enc)
        assert all(p.requires_grad for p in net.head.parameters())
        assert all(p.requires_grad for p in net.dfe.parameters())
        in_opt = {id(p) for g in build_optimizer(net, config.optim).param_groups for p in g["params"]}
        assert all((id(p) in in_opt) != frozen for p in enc)
