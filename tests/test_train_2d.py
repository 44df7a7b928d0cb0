"""End-to-end 2D training on generated ACDC-format phantoms with a tiny SAM-2 config (CPU, 64 px):
outputs, exact resume after ``kill -9``, evaluate.py, label-free inference, one-line errors."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from dataset.demo import ensure_demo
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "demo_acdc"), "acdc", seed=0)


def base_args(root, log_dir, iters=4, *extra):
    return ["-dataset", "demo", "-data_path", root, "-sam_config", TINY, "-image_size", "64", "-b", "2",
            "-b_u", "4", "-slab_len", "2", "-num_workers", "0", "-log_dir", str(log_dir), "-max_iters", str(iters),
            "-log_freq", "1", "-val_volumes", "1", "-save_freq", "2", "-val_freq", "1000", *extra]


def run_train(args, script="train_2d.py", timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def run_dirs(log_dir):
    """The run directories under ``log_dir`` (not the ``<exp_name>_latest`` link to the newest)."""
    return sorted(os.path.join(log_dir, d) for d in os.listdir(log_dir)
                  if os.path.isdir(os.path.join(log_dir, d)) and not os.path.islink(os.path.join(log_dir, d)))


def kill_after_first_checkpoint(script, args, log_dir, env=ENV, timeout=300):
    """Start ``script args`` and SIGKILL it as soon as its first ``last.pt`` exists under ``log_dir``.
    Returns (checkpoint path or None, the process's return code)."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, ckpt = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        dirs = run_dirs(log_dir) if os.path.exists(log_dir) else []
        if dirs and os.path.exists(os.path.join(dirs[0], "checkpoints", "last.pt")):
            ckpt = os.path.join(dirs[0], "checkpoints", "last.pt")
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return ckpt, proc.returncode


def scalar_series(run_dir, tag="train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.fixture(scope="module")
def finished_run(demo_root, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    r = run_train(base_args(demo_root, log_dir, 6))
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(log_dir)
    return run, r


def test_run_writes_outputs(finished_run):
    run, r = finished_run
    for f in ("config.json", "metrics.csv", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert os.path.isfile(os.path.join(run, f)), f
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run))
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert {"protocol", "split", "dice", "jaccard", "hd95", "asd"} <= set(summary)
    assert summary["protocol"] == "ssl4mis" and summary["split"] == "test"
    assert set(summary["dice"]) == {"RV", "Myo", "LV", "mean"}
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["model"]["image_size"] == 64 and config["semi"]["method"] == "sss"
    ckpt = torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=True)
    assert ckpt["iteration"] == 6 and list(ckpt["config"]["data"]["class_names"]) == ["RV", "Myo", "LV"]
    # best.pt holds weights only (model + EMA), last.pt what a resume needs; logs/<exp_name>_latest finds the run
    best_path = os.path.join(run, "checkpoints", "best.pt")
    best = torch.load(best_path, weights_only=True)
    assert {"model", "ema", "config"} <= set(best) and not {"optimizer", "scheduler", "rng"} & set(best)
    assert ckpt["optimizer"] is not None and os.path.getsize(best_path) < os.path.getsize(
        os.path.join(run, "checkpoints", "last.pt"))
    latest = os.path.join(os.path.dirname(run), "demo_2d_latest")
    assert os.path.realpath(latest) == os.path.realpath(run)
    assert all(f"test Dice, infer {m}:" in r.stdout + r.stderr for m in ("coarse", "boxes", "pcsw"))
    # one unit on the terminal: every percentage says % (summary.json keeps fractions in 0..1)
    out = r.stdout + r.stderr
    assert re.search(r"test Dice, infer pcsw: RV \d+\.\d %, Myo \d+\.\d %, LV \d+\.\d %, mean \d+\.\d %", out)
    assert re.search(r"\[iter \d+\] val mean Dice \d+\.\d\d % \(RV \d+\.\d %, Myo \d+\.\d %, LV \d+\.\d %\)", out)
    assert re.search(r"^dice %\s+\d", out, re.M) and re.search(r"^jaccard %\s+\d", out, re.M)
    assert 0.0 <= summary["dice"]["mean"] <= 1.0
    # the fair protocol, stated in the summary: budget, weights, inference mode, selection split
    assert (summary["max_iters"], summary["weights"], summary["infer"], summary["selected_on"]) == \
        (6, "ema", "pcsw", "val")
    assert set(summary["by_infer"]) == {"coarse", "boxes", "pcsw"}
    assert summary["by_infer"]["pcsw"]["dice"] == summary["dice"]
    splits = json.load(open(os.path.join(run, "splits.json")))
    assert set(splits) == {"labeled", "unlabeled", "unlabeled_dropped", "val", "test"}
    assert splits["val"] and splits["test"]
    assert splits["unlabeled_dropped"] == []              # the demo's unlabeled slices are all of training cases
    assert not set(splits["val"]) & set(splits["test"])
    losses = scalar_series(run)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(v) for v in losses.values())
    # validation rows carry the PCSW rates per class of the steps since the previous validation
    import csv
    rows = list(csv.DictReader(open(os.path.join(run, "metrics.csv"))))
    rates = {k: float(v) for k, v in rows[-1].items() if k.startswith("pcsw_")}
    assert set(rates) == {f"pcsw_{n}_{c}" for n in ("accept", "fallback", "reject") for c in ("RV", "Myo", "LV")}
    assert all(0.0 <= v <= 1.0 for v in rates.values())
    for c in ("RV", "Myo", "LV"):   # a class the coarse head predicts is accepted, a fallback or rejected
        assert sum(rates[f"pcsw_{n}_{c}"] for n in ("accept", "fallback", "reject")) <= 1.0 + 1e-6
    # the one-picture summary: montage of 4 test volumes beside the validation curve, its path printed
    from PIL import Image
    picture = os.path.join(run, "vis", "summary.png")
    assert f"summary picture: {picture}" in r.stdout + r.stderr
    with Image.open(picture) as im:
        assert im.format == "PNG" and im.size[0] >= 1000 and im.size[1] >= 4 * 200


def test_kill9_and_resume_continue_exactly(demo_root, finished_run, tmp_path):
    """A run killed with SIGKILL after its first checkpoint resumes and logs the same losses as the
    uninterrupted run (CPU, same seed)."""
    reference = scalar_series(finished_run[0])
    log_dir = tmp_path / "logs"
    ckpt, _ = kill_after_first_checkpoint("train_2d.py", base_args(demo_root, log_dir, 6), log_dir)
    assert ckpt is not None, "no checkpoint appeared before the run ended"
    it = torch.load(ckpt, weights_only=True)["iteration"]
    assert it == 2
    # a save cut by kill -9 leaves its temporary file; the resumed run removes it (its writer is dead)
    dead_pid = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 100000
    stale = f"{ckpt}.{dead_pid}.0123abcd.tmp"
    with open(stale, "wb") as f:
        f.write(b"half a checkpoint")
    r = run_train(["-resume", ckpt, *base_args(demo_root, log_dir, 6)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {ckpt} at iteration 2/6" in r.stdout + r.stderr
    assert not os.path.exists(stale) and f"removed 1 temporary file(s) of interrupted saves: {stale}" in r.stdout
    resumed = scalar_series(os.path.dirname(os.path.dirname(ckpt)))
    for step in (3, 4, 5, 6):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), (step, resumed, reference)
    # metrics.csv too: the PCSW rates of the interval cut by the kill are in the checkpoint
    with open(os.path.join(finished_run[0], "metrics.csv")) as f:
        want = list(csv.DictReader(f))
    with open(os.path.join(os.path.dirname(os.path.dirname(ckpt)), "metrics.csv")) as f:
        got = list(csv.DictReader(f))
    assert [r["iteration"] for r in got] == [r["iteration"] for r in want]
    rates = [k for k in want[0] if k.startswith("pcsw_")]
    assert rates and all(g[k] == w[k] for g, w in zip(got, want) for k in rates), (got, want)
    for g, w in zip(got, want):
        assert float(g["dice_mean"]) == pytest.approx(float(w["dice_mean"]), abs=1e-6)


def test_evaluate_cli_and_saved_predictions(finished_run, demo_root, tmp_path):
    run, _ = finished_run
    r = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "-ckpt",
                        os.path.join(run, "checkpoints", "best.pt"), "-split", "val", "-data_path", demo_root,
                        "-save_pred", "-log_dir", str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    (out,) = [os.path.join(tmp_path, d) for d in os.listdir(tmp_path)]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["split"] == "val" and summary["num_volumes"] == 4
    preds = os.listdir(os.path.join(out, "predictions"))
    assert len(preds) == 4 and all(p.endswith(".h5") for p in preds)
    import h5py
    with h5py.File(os.path.join(out, "predictions", preds[0])) as f:
        pred = f["prediction"][:]
    with h5py.File(os.path.join(demo_root, "data", preds[0])) as f:
        assert pred.shape == f["image"].shape and pred.max() <= 3


def test_predictions_do_not_depend_on_labels(finished_run, demo_root):
    """The evaluation loop gives the predictor the image only: replacing every label changes nothing."""
    import cfg
    from dataset import build_datasets
    from sam2_train.engine.checkpoint import load_checkpoint, load_model_state
    from sam2_train.evaluation.loop import evaluate_volumes
    from sam2_train.engine.device import autocast
    from sam2_train.methods.networks import network
    from sam2_train.model.sss_net import build_sss_net

    run, _ = finished_run
    state = load_checkpoint(os.path.join(run, "checkpoints", "last.pt"))
    config = cfg.parse_config(base_args(demo_root, "unused") + ["-pcsw", "0"], "2d").replace(model={"num_classes": 3})
    net = build_sss_net(config.model, sam_ckpt="none")
    load_model_state(net, state["model"])
    with torch.no_grad():  # make the barely trained coarse head prompt every class, so predictions are not empty
        net.head.cls.bias.copy_(torch.tensor([0.0, 3.0, 3.0, 3.0]))
    splits = build_datasets(config.data, "2d", image_size=config.model.image_size, seed=config.run.seed)
    vols = [splits.val[i] for i in range(2)]
    fake = [dict(v, label=np.random.default_rng(0).integers(0, 4, np.shape(v["label"]))) for v in vols]
    predict = lambda img, sp: network("sam2").predict(net, img, config=config, infer="boxes",  # noqa: E731
                                                      device=torch.device("cpu"),
                                                      autocast=lambda: autocast("cpu", "off"))
    names = ["RV", "Myo", "LV"]
    real = evaluate_volumes(vols, predict, names, protocol="ssl4mis", split="val", keep_predictions=True)
    swapped = evaluate_volumes(fake, predict, names, protocol="ssl4mis", split="val", keep_predictions=True)
    assert any(pred.max() > 0 for pred in real.predictions.values())
    for name, pred in real.predictions.items():
        np.testing.assert_array_equal(pred, swapped.predictions[name])
    assert real.summary["dice"] != swapped.summary["dice"]  # the labels did change the scores
    one = evaluate_volumes(vols, predict, names, protocol="ssl4mis", split="val", keep_predictions=[vols[1]["name"]])
    assert list(one.predictions) == [vols[1]["name"]] and one.summary["dice"] == real.summary["dice"]
    np.testing.assert_array_equal(one.predictions[vols[1]["name"]], real.predictions[vols[1]["name"]])
    assert evaluate_volumes(vols, predict, names, protocol="ssl4mis", split="val").predictions is None


@pytest.mark.parametrize("extra,needle", [
    (["-data_path", "/nonexistent/acdc", "-dataset", "acdc"], "/nonexistent/acdc"),
    (["-sam_ckpt", "/nonexistent/sam2_hiera_small.pt", "-sam_config", "sam2_hiera_s"], "download_ckpts.sh"),
    (["-resume", "/nonexistent/last.pt"], "/nonexistent/last.pt"),
])
def test_bad_input_is_one_line(extra, needle, demo_root, tmp_path):
    r = run_train(base_args(demo_root, tmp_path, 2) + extra)
    assert r.returncode == 2
    err = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(err) == 1 and needle in err[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_resuming_a_weights_only_best_pt_says_to_use_last_pt(finished_run, demo_root, tmp_path):
    run, _ = finished_run
    best = os.path.join(run, "checkpoints", "best.pt")
    r = run_train(["-resume", best, *base_args(demo_root, tmp_path / "logs", 6)])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: -resume {best}: this checkpoint holds weights only (model and EMA, no optimiser state); resume from "
        f"{os.path.join(run, 'checkpoints', 'last.pt')}, or start a new run from these weights with -pretrain")
