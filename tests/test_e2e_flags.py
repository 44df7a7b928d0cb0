"""End to end through the training scripts at a tiny size (CPU, 64 px, random weights, small generated
demo-format data): both seed commands of the README as written there (only the checkpoint, the image size,
the data path and the iteration budget changed), ``-vis 1``, ``-amp bf16 -device cpu`` (CPU bf16 autocast:
the dtype paths of CUDA bf16) with ``-protocol unimatch``, ``-method fixmatch`` and ``-pretrain``."""
import json
import os
import shlex

import numpy as np
import pytest
import torch

from sam2_train.engine.config import TrainConfig
from tests.test_train_2d import ROOT, TINY, run_dirs, run_train, scalar_series


@pytest.fixture(scope="module")
def acdc_small(tmp_path_factory):
    from dataset.demo import ensure_demo  # 6 patients: 4 train, 1 val, 1 test
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "acdc_small"), "acdc", seed=0, patients=6)


@pytest.fixture(scope="module")
def bhsd_small(tmp_path_factory):
    from dataset.demo import ensure_demo  # 4 labeled volumes (2 train, 1 val, 1 test) + 2 unlabeled
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "bhsd_small"), "bhsd", seed=0, labeled=4, unlabeled=2)


def readme_command(script):
    """The README's seed command for ``script`` as an argument list (without ``python <script>``)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        (line,) = [l for l in f if l.startswith(f"python {script} -net sam2 ")]
    return shlex.split(line)[2:]


def replace_flags(argv, **values):
    out = list(argv)
    for flag, value in values.items():
        i = out.index(f"-{flag}")
        out[i + 1] = str(value)
    return out


def tiny_common(log_dir):
    return ["-max_iters", "2", "-log_freq", "1", "-num_workers", "0", "-device", "cpu", "-log_dir", str(log_dir)]


def finished(log_dir, r):
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (run,) = run_dirs(log_dir)
    losses = scalar_series(run)
    assert sorted(losses) == [1, 2] and all(np.isfinite(v) for v in losses.values()), losses
    for f in ("checkpoints/last.pt", "checkpoints/best.pt", "summary.json"):
        assert os.path.isfile(os.path.join(run, f)), f
    config = TrainConfig.from_dict(json.load(open(os.path.join(run, "config.json"))), "config.json")
    return run, config, json.load(open(os.path.join(run, "summary.json")))


def test_seed_command_2d_with_vis(acdc_small, tmp_path):
    argv = replace_flags(readme_command("train_2d.py"), sam_ckpt="none", image_size=64, out_size=64,
                         data_path=acdc_small)
    assert argv[argv.index("-dataset") + 1] == "ACDC" and argv[argv.index("-vis") + 1] == "1"
    run, config, summary = finished(tmp_path, run_train(argv + tiny_common(tmp_path)))
    assert os.path.basename(run).startswith("ACDC_SSS_")
    assert config.data.dataset == "acdc" and config.model.sam_config == "sam2_hiera_s" and config.run.batch_size == 4
    assert summary["split"] == "test" and set(summary["dice"]) == {"RV", "Myo", "LV", "mean"}
    # -vis 1: an overlay per slice of the validated volumes, at the validation of iteration 2
    pngs = os.listdir(os.path.join(run, "vis", "iter000002"))
    assert pngs and all(p.endswith(".png") for p in pngs)


def test_seed_command_3d(bhsd_small, tmp_path):
    # -labeled_num 1: BHSD's default (96, the whole training half) exceeds this 2-volume training half
    argv = replace_flags(readme_command("train_3d.py"), sam_ckpt="none", image_size=64, data_path=bhsd_small)
    run, config, summary = finished(tmp_path, run_train(argv + tiny_common(tmp_path) + ["-labeled_num", "1"],
                                                        script="train_3d.py"))
    assert os.path.basename(run).startswith("BHSD_SSS_")
    assert config.data.dataset == "bhsd" and config.method.prompt == "bbox" and config.infer.prompt_freq == 2
    assert summary["split"] == "test" and set(summary["dice"]) == {"EDH", "IPH", "IVH", "SAH", "SDH", "mean"}


def tiny_2d(root, log_dir, *extra):
    return ["-dataset", "demo", "-data_path", root, "-sam_config", TINY, "-image_size", "64", "-b", "2",
            "-b_u", "4", "-slab_len", "2", "-val_freq", "1000", *tiny_common(log_dir), *extra]


@pytest.fixture(scope="module")
def bf16_unimatch_run(acdc_small, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("bf16")
    return finished(log_dir, run_train(tiny_2d(acdc_small, log_dir, "-amp", "bf16", "-protocol", "unimatch")))


def test_2d_sss_bf16_autocast_and_unimatch_protocol(bf16_unimatch_run, acdc_small):
    run, config, summary = bf16_unimatch_run
    assert config.run.amp == "bf16" and config.semi.method == "sss"
    assert summary["protocol"] == "unimatch" and summary["split"] == "test"
    rows = open(os.path.join(run, "cases_test.csv")).read().splitlines()[1:]
    assert {r.split(",")[0] for r in rows} == set(open(os.path.join(acdc_small, "test.list")).read().split())


def test_pretrain_initialises_the_training_loop(bf16_unimatch_run, acdc_small, tmp_path):
    # -lr 0: nothing moves, so the trained weights are exactly the -pretrain checkpoint's (a run that ignored
    # -pretrain would hold the seed's random init, which the source run trained away from)
    src = os.path.join(bf16_unimatch_run[0], "checkpoints", "last.pt")
    run, config, _ = finished(tmp_path, run_train(tiny_2d(acdc_small, tmp_path, "-pretrain", src, "-lr", "0")))
    assert config.run.pretrain == src
    pre = torch.load(src, weights_only=True)["model"]
    got = torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=True)["model"]
    assert set(got) == set(pre)
    for k, v in pre.items():
        if k != "class_conf":  # a running statistic of the labeled data (PCSW calibration), not a weight
            assert torch.equal(got[k], v), k


def test_2d_fixmatch(acdc_small, tmp_path):
    r = run_train(tiny_2d(acdc_small, tmp_path, "-method", "fixmatch"))
    run, config, summary = finished(tmp_path, r)
    assert config.semi.method == "fixmatch" and summary["method"] == "fixmatch"
    loss_u = scalar_series(run, "train/loss_u")  # the weak-to-strong term is computed and logged every step
    assert sorted(loss_u) == [1, 2] and all(np.isfinite(v) for v in loss_u.values())
