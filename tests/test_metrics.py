"""Metrics (sam2_train/evaluation/metrics.py) against medpy.metric.binary.

Tolerances: Dice/Jaccard rtol 1e-6 (MONAI computes them in float32); distances rtol 1e-5 (MONAI returns
float32 surface distances, medpy float64). Surfaces are defined identically (erosion with the
face-connected element, array border = outside), so there is no definitional tolerance.
"""
import math

import numpy as np
import pytest
from scipy import ndimage

medpy_binary = pytest.importorskip("medpy.metric.binary")

from sam2_train.evaluation.metrics import summarize, volume_metrics  # noqa: E402

RTOL_OVERLAP, RTOL_DIST = 1e-6, 1e-5


def random_labels(shape, K, seed):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int64)
    for c in range(1, K + 1):
        seeds = rng.random(shape) < 0.02
        lab[ndimage.binary_dilation(seeds, iterations=2) & (lab == 0)] = c
    return lab


def medpy_row(p, g, spacing=None):
    return dict(dice=medpy_binary.dc(p, g), jaccard=medpy_binary.jc(p, g),
                hd95=medpy_binary.hd95(p, g, voxelspacing=spacing), asd=medpy_binary.asd(p, g, voxelspacing=spacing),
                assd=medpy_binary.assd(p, g, voxelspacing=spacing))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_volumes_match_medpy(seed):
    K, shape, spacing = 3, (6, 28, 32), (5.0, 0.7, 0.9)
    pred, gt = random_labels(shape, K, seed), random_labels(shape, K, seed + 100)
    out = volume_metrics(pred, gt, K, spacing=spacing)
    assert set(out) == {"dice", "jaccard", "hd95", "asd", "assd", "hd95_mm", "asd_mm", "assd_mm",
                        "empty_pred"}
    assert (out["empty_pred"] == 0).all()
    for c in range(1, K + 1):
        p, g = pred == c, gt == c
        assert p.any() and g.any()
        vox, mm = medpy_row(p, g), medpy_row(p, g, spacing)
        for k in ("dice", "jaccard"):
            np.testing.assert_allclose(out[k][c - 1], vox[k], rtol=RTOL_OVERLAP)
        for k in ("hd95", "asd", "assd"):
            np.testing.assert_allclose(out[k][c - 1], vox[k], rtol=RTOL_DIST)
            np.testing.assert_allclose(out[f"{k}_mm"][c - 1], mm[k], rtol=RTOL_DIST)
    assert not np.allclose(out["hd95"], out["hd95_mm"])   # the spacing is really used


def test_torch_input_2d_and_border_objects():
    import torch
    g = np.zeros((20, 24), np.int64)
    g[0:6, 0:7] = 1                      # touches the array border
    g[10:20, 12:24] = 2                  # touches two borders
    p = np.zeros_like(g)
    p[0:5, 1:9] = 1
    p[12:20, 10:24] = 2
    out = volume_metrics(torch.from_numpy(p), torch.from_numpy(g), 2, spacing=(1.5, 0.5))
    for c in (1, 2):
        ref, ref_mm = medpy_row(p == c, g == c), medpy_row(p == c, g == c, (1.5, 0.5))
        for k in ("dice", "jaccard", "hd95", "asd", "assd"):
            np.testing.assert_allclose(out[k][c - 1], ref[k], rtol=RTOL_DIST)
        for k in ("hd95", "asd", "assd"):
            np.testing.assert_allclose(out[f"{k}_mm"][c - 1], ref_mm[k], rtol=RTOL_DIST)


def test_single_voxels():
    p = np.zeros((5, 9, 9), np.int64)
    g = np.zeros_like(p)
    p[2, 4, 4] = g[2, 4, 4] = 1
    p[0, 0, 0], g[4, 8, 5] = 2, 2
    out = volume_metrics(p, g, 2)
    assert out["dice"][0] == 1 and out["jaccard"][0] == 1 and out["hd95"][0] == 0 and out["asd"][0] == 0
    assert out["dice"][1] == 0
    d = math.sqrt(4 ** 2 + 8 ** 2 + 5 ** 2)
    np.testing.assert_allclose([out["hd95"][1], out["asd"][1], out["assd"][1]], [d, d, d], rtol=RTOL_DIST)
    np.testing.assert_allclose(out["hd95"][1], medpy_binary.hd95(p == 2, g == 2), rtol=RTOL_DIST)


def test_empty_conventions():
    g = np.zeros((4, 10, 10), np.int64)
    g[1:3, 2:5, 2:5] = 1                 # class 1: prediction empty
    p = np.zeros_like(g)
    p[0:2, 6:9, 6:9] = 2                 # class 2: ground truth empty; class 3: both empty
    out = volume_metrics(p, g, 3, spacing=(2.0, 1.0, 1.0))
    for c in (0, 1):
        assert out["dice"][c] == 0 and out["jaccard"][c] == 0
        for k in ("hd95", "asd", "assd", "hd95_mm", "asd_mm", "assd_mm"):
            assert np.isnan(out[k][c]), (k, c)
    for k, v in out.items():
        assert np.isnan(v[2]), k
    # medpy agrees on the overlap metrics where it defines them
    assert medpy_binary.dc(p == 1, g == 1) == 0 and medpy_binary.jc(p == 2, g == 2) == 0
    # SSL4MIS-style: a fixed distance when exactly one side is empty; both-empty stays NaN
    out0 = volume_metrics(p, g, 3, empty_distance=0.0)
    assert out0["hd95"][0] == 0 and out0["asd"][1] == 0 and np.isnan(out0["hd95"][2])
    with pytest.raises(ValueError):
        volume_metrics(p, g[:2], 3)
    with pytest.raises(ValueError):
        volume_metrics(p, g, 3, spacing=(1.0, 1.0))


def test_summarize_nan_aware():
    rows = [
        dict(dice=np.array([1.0, np.nan, 0.5]), hd95=np.array([2.0, np.nan, np.nan])),
        dict(dice=np.array([0.5, np.nan, 0.0]), hd95=np.array([4.0, np.nan, 1.0])),
    ]
    s = summarize(rows, ["RV", "Myo", "LV"])
    assert s["dice"]["RV"] == 0.75 and math.isnan(s["dice"]["Myo"]) and s["dice"]["LV"] == 0.25
    assert s["dice"]["mean"] == 0.5
    assert s["hd95"]["RV"] == 3.0 and s["hd95"]["LV"] == 1.0 and s["hd95"]["mean"] == 2.0
    assert list(summarize(rows, ["a", "b", "c"], metrics=["hd95"])) == ["hd95"]
    with pytest.raises(ValueError):
        summarize(rows, ["RV", "Myo"])
    # end to end with volume_metrics rows
    g = random_labels((4, 16, 16), 2, 5)
    rows = [volume_metrics(g, g, 2), volume_metrics(np.zeros_like(g), g, 2)]
    s = summarize(rows, ["a", "b"])
    assert s["dice"]["mean"] == 0.5 and s["hd95"]["mean"] == 0.0 and s["jaccard"]["a"] == 0.5


def test_summary_names_the_classes_its_mean_averages():
    """A class absent from every volume (ground truth and prediction) is named in classes_not_in_mean, and the
    mean is over classes_in_mean only."""
    from sam2_train.evaluation.loop import evaluate_volumes, format_summary
    label = np.zeros((2, 8, 8), np.int64)
    label[:, 2:5, 2:5] = 1
    label[1, 6:8, 6:8] = 3                       # class 2 ("B") appears nowhere
    vols = [{"name": f"v{i}", "image": label.astype(np.float32), "label": label, "spacing": None} for i in range(2)]
    res = evaluate_volumes(vols, lambda image, spacing: np.where(image == 1, 1, 0), ("A", "B", "C"),
                           protocol="ssl4mis", split="test", progress=False)
    s = res.summary
    assert s["classes_in_mean"] == ["A", "C"]
    assert s["classes_not_in_mean"] == {"B": "absent from the ground truth and the prediction of every volume"}
    assert s["dice"]["mean"] == pytest.approx((s["dice"]["A"] + s["dice"]["C"]) / 2) and s["dice"]["C"] == 0.0
    assert "mean leaves out B" in format_summary(s, ("A", "B", "C"))


def test_asd_means_directed_and_assd_symmetric_in_every_layer():
    """One key, one meaning: ``asd`` is medpy's directed asd (prediction -> ground truth) and ``assd`` the
    symmetric one, in volume_metrics and in what summary.json reports; the pair is chosen so that they differ."""
    from sam2_train.evaluation.loop import reported_metrics
    gt = np.zeros((1, 32, 32), np.int64)
    gt[0, 4:28, 4:28] = 1
    pred = np.zeros_like(gt)
    pred[0, 10:14, 10:14] = 1          # small, inside: d(P->G) is small, d(G->P) large
    want_asd = medpy_binary.asd(pred == 1, gt == 1)
    want_assd = medpy_binary.assd(pred == 1, gt == 1)
    assert abs(want_asd - want_assd) > 1.0
    out = volume_metrics(pred, gt, 1)
    reported = reported_metrics(out, in_mm=False)
    for m in (out, reported):
        np.testing.assert_allclose([m["asd"][0], m["assd"][0]], [want_asd, want_assd], rtol=RTOL_DIST)
