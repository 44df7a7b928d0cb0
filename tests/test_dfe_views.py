"""How the unlabeled views pass through DFE (``-dfe_views``), and the labeled-only SSS row.

- ``own``: each strong view is enhanced alone, so the student's strong-view features do not depend on the weak
  image (``cross``, the pairing DFE(W, S), makes them depend on it: the weak view leaks into the strong branch);
- ``joint``: DFE(W, S) gives W' and S' in one forward, and the pseudo-labels are those of that W' (so they move
  with the strong view, which the teacher's single-view labels of ``cross`` never do);
- ``-method sss_labeled_only``: the SSS network (DFE, PCSW) on labeled data only.
"""
import dataclasses

import pytest
import torch

from tests.test_levers import make_config, make_method, make_net


def active_dfe(net, gamma=0.5):
    """DFE made non-trivial: gamma is zero-initialised (DFE = identity), which would hide any pairing."""
    with torch.no_grad():
        for block in net.dfe.blocks.values():
            block.gamma.fill_(gamma)
    return net


def unlabeled_views(script, seed=0):
    g = torch.Generator().manual_seed(seed)
    lead = (2, 2) if script == "2d" else (2, 4)                     # (slabs, L) / (clips, T)
    return {k: torch.rand(*lead, 1, 64, 64, generator=g) for k in ("image_w", "image_s1", "image_s2")}


def setup(script, views_mode, *extra):
    config = make_config(script, "-dfe_views", views_mode, "-tau_u", "0", *extra)
    net = active_dfe(make_net(config)).eval()
    return net, make_method(net, net, config)


@pytest.mark.parametrize("script", ["2d", "3d"])
@pytest.mark.parametrize("views_mode, depends", [("cross", True), ("own", False), ("joint", True)])
def test_strong_view_features_depend_on_the_weak_image_only_when_paired(script, views_mode, depends):
    from sam2_train.methods.weak_to_strong import student_strong_views
    net, step = setup(script, views_mode, "-cutmix_p", "0")
    views = unlabeled_views(script)
    with torch.no_grad():
        u = step.teacher_targets(views)
        strong, weak = student_strong_views(net, u, False, views_mode)
        n = u.images.shape[0] // 3
        other = dataclasses.replace(u, images=torch.cat([torch.rand_like(u.images[:n]), u.images[n:]]),
                                    weak_backbone=None)
        strong2, _ = student_strong_views(net, other, False, views_mode)
    assert (weak is None) == (views_mode == "own")
    moved = max((a - b).abs().max().item() for a, b in zip(strong.feats, strong2.feats))
    if depends:
        assert moved > 1e-3
    else:
        assert moved == 0.0


def labeled_batch(script):
    g = torch.Generator().manual_seed(5)
    lead = (2,) if script == "2d" else (1, 4)                        # slices / (clips, T)
    return {"image": torch.rand(*lead, 1, 64, 64, generator=g),
            "label": torch.randint(0, 4, (*lead, 64, 64), generator=g)}


@pytest.mark.parametrize("script", ["2d", "3d"])
def test_joint_pseudo_labels_are_those_of_the_same_forwards_weak_features(script):
    """With -dfe_views joint the targets of the strong views are the student's own labels of W' from this very
    forward (the W' output of DFE's two-view call), not the teacher's, and they carry no gradient."""
    net, step = setup(script, "joint")
    views = unlabeled_views(script)
    seen, got, enhance, own_targets = [], {}, net.enhance, step.own_weak_targets

    def record(feats_w, feats_s=None):
        out = enhance(feats_w, feats_s)
        if feats_s is not None:                                  # DFE(W, S) of the unlabeled views
            seen.append(out[0])
        return out

    def capture(feats_w, u):
        got["feats_w"], got["teacher"] = feats_w, u
        got["u"] = own_targets(feats_w, u)
        return got["u"]
    net.enhance, step.own_weak_targets = record, capture
    out = step(labeled_batch(script), views, 0)
    assert len(seen) == 1 and torch.isfinite(out["loss_u"]) and out["loss_u"] > 0
    assert all(a is b for a, b in zip(got["feats_w"].feats, seen[0]))      # the same forward's W'
    u, teacher = got["u"], got["teacher"]
    assert not u.conf.requires_grad
    with torch.no_grad():
        probs = net.coarse(got["feats_w"].feats).float().softmax(1)
        labels, conf = step.prompted_labels(net, got["feats_w"], teacher.prompts, probs, teacher.num_clips)
    assert torch.equal(u.labels, labels)
    torch.testing.assert_close(u.conf, conf)
    assert not torch.equal(u.conf, teacher.conf)                 # not the teacher's single-view labels


@pytest.mark.parametrize("script", ["2d", "3d"])
@pytest.mark.parametrize("views_mode, moves", [("cross", False), ("joint", True)])
def test_pseudo_labels_follow_the_strong_view_only_when_joint(script, views_mode, moves):
    """The teacher labels the weak view alone (cross): changing a strong image leaves its targets as they are.
    Joint labels come from W' = DFE(W, S), so they move with S."""
    net, step = setup(script, views_mode, "-cutmix_p", "0")
    targets = []
    orig = step.unlabeled_mask_loss

    def capture(feats, u, conf_ok):
        targets.append(u.conf.clone())
        return orig(feats, u, conf_ok)
    step.unlabeled_mask_loss = capture
    views = unlabeled_views(script)
    with torch.no_grad():
        for s1 in (views["image_s1"], torch.rand_like(views["image_s1"])):
            torch.manual_seed(0)
            step(labeled_batch(script), {**views, "image_s1": s1}, 0)
    assert moves == (not torch.equal(targets[0], targets[1]))


@pytest.mark.parametrize("script", ["2d", "3d"])
def test_sss_labeled_only_is_the_sss_network_without_unlabeled_data(script):
    from sam2_train.methods.registry import method_class
    config = make_config(script, "-method", "sss_labeled_only", "-pcsw", "1", "-dfe", "1")
    assert config.model.dfe and config.method.pcsw
    klass = method_class("sss_labeled_only", "sam2", script)
    assert not klass.needs_unlabeled
    default = make_config(script, "-method", "sss_labeled_only")
    assert default.model.dfe and default.method.pcsw              # SSS's defaults, nothing refused
    net = active_dfe(make_net(config))
    out = make_method(net, net, config)(labeled_batch(script), None, 0)
    assert set(out) == {"loss", "loss_x"}
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "dfe" in n)


def test_every_sam2_table_has_the_labeled_only_row():
    import os

    import yaml
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "configs", "paper.yaml")) as f:
        paper = yaml.safe_load(f)
    assert paper["rows"]["sss_labeled_only"]["flags"] == {"method": "sss_labeled_only"}
    for table in ("acdc", "acdc_cpu", "bhsd"):
        rows = paper["tables"][table]["rows"]
        assert "sss_labeled_only" in rows and rows.index("sss_labeled_only") < rows.index("sss"), table


@pytest.mark.parametrize("script", ["2d", "3d"])
def test_with_own_views_the_students_strong_branch_never_sees_the_weak_image(script):
    """-dfe_views own, in 2D and 3D (the shared step): through a whole training step, the features of the student's
    strong views do not change when only the weak image changes (the teacher's pseudo-labels do), and the student
    encodes no weak view. The default stays the paper's pairing (docs/evidence.md: the same-code curves do not
    support a change)."""
    from tests.test_levers import EncodeLog
    assert make_config(script).method.dfe_views == "cross"
    config = make_config(script, "-tau_u", "0", "-cutmix_p", "0", "-dfe_views", "own")
    net = active_dfe(make_net(config)).eval()
    step = make_method(net, net, config)
    seen = []
    orig = step.unlabeled_mask_loss

    def capture(feats, u, conf_ok):
        seen.append(([f.clone() for f in feats.feats], u.conf.clone()))
        return orig(feats, u, conf_ok)
    step.unlabeled_mask_loss = capture
    views = unlabeled_views(script)
    log = EncodeLog(net)
    with torch.no_grad():
        for weak in (views["image_w"], torch.rand_like(views["image_w"])):
            torch.manual_seed(0)
            step(labeled_batch(script), {**views, "image_w": weak}, 0)
    (a, conf_a), (b, conf_b) = seen
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(conf_a, conf_b)                         # the teacher did see the new weak image
    n = views["image_w"].shape[0] * views["image_w"].shape[1]
    labeled = 2 if script == "2d" else 4
    assert log.sizes == [labeled, 2 * n] * 2, log.sizes           # labeled rows, then the 2N strong rows only
