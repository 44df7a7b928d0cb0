"""A researcher's first hour (issue 34): user mistakes end in one line, never a traceback, and no flag is guessed
or ignored in silence."""
import os

import numpy as np
import pytest
import torch

import cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")


def parse_error(capsys, argv, script="2d"):
    with pytest.raises(SystemExit) as e:
        cfg.parse_config(argv, script)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_an_abbreviated_flag_is_a_typo_not_a_guess(capsys):
    assert "unrecognized arguments: -max_iter 3" in parse_error(capsys, ["-dataset", "demo", "-max_iter", "3"])
    assert cfg.parse_config(["-dataset", "demo", "-max_iters=3"], "2d").run.max_iters == 3


def test_evaluate_and_predict_take_no_abbreviation(capsys):
    import evaluate
    import predict
    for main, argv, typo in ((evaluate.main, ["-ckpt", "x.pt"], "-spli"),
                             (predict.main, ["-ckpt", "x.pt", "-input", "a", "-out", "b"], "-overla")):
        with pytest.raises(SystemExit) as e:
            main([*argv, typo, "1"])
        assert e.value.code == 2 and f"unrecognized arguments: {typo} 1" in capsys.readouterr().err


def test_prompt_freq_in_2d_is_said_to_be_ignored(capsys):
    config = cfg.parse_config(["-dataset", "demo", "-prompt_freq", "3"], "2d")
    assert config.infer.prompt_freq == 2                            # the default: 2D does not read it
    assert "warning: -prompt_freq is read by train_3d.py only; train_2d.py ignores it" in capsys.readouterr().err
    assert cfg.parse_config(["-dataset", "demo", "-prompt_freq", "3"], "3d").infer.prompt_freq == 3


def test_an_unknown_sam_config_is_refused_while_parsing(capsys, tmp_path):
    """Before the data check or any other work: the data path does not even exist."""
    line = parse_error(capsys, ["-dataset", "acdc", "-data_path", str(tmp_path / "nowhere"), "-sam_config",
                                "sam2_hiera_x"])
    assert "unknown -sam_config 'sam2_hiera_x'; allowed: sam2_hiera_t" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    import run_training
    status = run_training.main(["-dataset", "demo", "-data_path", str(tmp_path / "demo"), "-sam_config", TINY,
                                "-image_size", "64", "-device", "cuda", "-log_dir", str(tmp_path / "logs")], "2d")
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and err == [err[0]] and err[0].startswith("error: -device cuda was requested but CUDA is "
                                                                 "not available"), err
    from sam2_train.engine.device import DeviceError, select_device
    with pytest.raises(DeviceError):
        select_device("cuda")
    assert issubclass(DeviceError, RuntimeError)                  # what callers caught before still catches it


# ------------------------------------------------------------------ your own data
def custom_root(tmp_path, n=6, unlabeled=0):
    from tests._data_fixtures import make_bhsd_root
    root = str(tmp_path / "custom")
    names = make_bhsd_root(root, n=n, layout="nnunet", unlabeled=unlabeled, same_key_pairs=0)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("A\nB\nC\nD\nE\n")
    return root, names


def custom_splits(root, script="2d", *flags, method="sss"):
    from dataset import build_datasets
    config = cfg.parse_config(["-dataset", "custom", "-data_path", root, "-method", method, *flags], script)
    return config, build_datasets(config.data, script, image_size=64, seed=0, unlabeled=method != "supervised",
                                  needed_by=f"-method {method}")


def test_custom_without_unlabeled_cases_names_the_custom_folder(tmp_path):
    from dataset import DatasetError
    root, _ = custom_root(tmp_path)
    with pytest.raises(DatasetError) as e:
        custom_splits(root)
    msg = str(e.value)
    assert "no imagesUnlabeled/ folder" in msg and "unlabel_" not in msg and "-method sss" in msg


def test_custom_split_rule_is_the_documented_one(tmp_path):
    """Every training case is labeled by default; test = 20 % of the pool, validation = a patient-grouped share of
    the rest (at least one case), the three disjoint; imagesUnlabeled/ is the unlabeled set; docs/data.md says so."""
    root, names = custom_root(tmp_path, n=10, unlabeled=2)
    config, splits = custom_splits(root)
    assert config.data.labeled_num is None
    c = splits.case_names
    assert len(c["test"]) == 2 and len(c["val"]) >= 1
    assert sorted(c["labeled"] + c["val"] + c["test"]) == sorted(names)          # all training cases labeled
    assert not set(c["val"]) & set(c["test"]) and len(c["unlabeled"]) == 2
    _, three = custom_splits(root, "2d", "-labeled_num", "3")
    assert len(three.case_names["labeled"]) == 3 and len(three.case_names["unlabeled"]) == len(c["labeled"]) - 3 + 2
    with open(os.path.join(ROOT, "docs", "data.md")) as f:
        doc = " ".join(f.read().split())
    assert "val = test" not in doc
    assert "else a patient-grouped 10% of the training cases, at least one" in doc
    assert "every training case is labeled by default" in doc


def test_custom_runs_are_not_labelled_with_an_acdc_protocol(tmp_path):
    from dataset import build_datasets
    from dataset.demo import ensure_demo
    from sam2_train.evaluation.evaluate import evaluate_model
    root, _ = custom_root(tmp_path, unlabeled=1)
    custom, splits = custom_splits(root, "2d", method="supervised")
    custom = cfg.with_data(custom, splits)
    demo = ensure_demo(str(tmp_path / "demo_acdc"), "acdc", seed=0)
    acdc = cfg.parse_config(["-dataset", "demo", "-data_path", demo, "-method", "supervised"], "2d")
    acdc = cfg.with_data(acdc, build_datasets(acdc.data, "2d", image_size=64, seed=0, unlabeled=False))
    assert (custom.data.acdc_protocol, acdc.data.acdc_protocol) == (False, True)

    class Zeros:
        def predict(self, net, image, **kw):
            return np.zeros(np.asarray(image).shape[:1] + np.asarray(image).shape[-2:], np.int64)
    volume = splits.val[0]
    for config, want in ((custom, "volume"), (acdc, "ssl4mis")):
        res = evaluate_model(Zeros(), torch.nn.Identity(), [volume], config, infer="pcsw", device="cpu",
                             autocast=None, split="val")
        assert res.summary["protocol"] == want


def test_training_and_the_data_check_count_in_the_same_units(tmp_path):
    from dataset import build_datasets
    from dataset.check import check_splits
    from dataset.demo import ensure_demo
    demo = ensure_demo(str(tmp_path / "demo_acdc"), "acdc", seed=0)
    config = cfg.parse_config(["-dataset", "demo", "-data_path", demo], "2d")
    splits = build_datasets(config.data, "2d", image_size=64, seed=0, unlabeled=True)
    report = check_splits(splits, cache_file="", progress=False).splits
    line = splits.summary()
    lab, unl = report["labeled"], report["unlabeled"]
    assert f"labeled {lab['volumes']} volume(s) ({lab['slices']} slices)" in line, line
    assert f"unlabeled {unl['volumes']} volume(s) ({len(splits.unlabeled)} slabs)" in line, line
    assert f"val {report['val']['volumes']} volume(s)" in line


# ------------------------------------------------------------------ bad -sam_ckpt files
@pytest.mark.parametrize("content, why", [
    (bytes(range(7, 250)) * 20, "it starts with bytes 07 08 09 0a, neither a zip archive nor a pickle"),
    (b"model weights are on the cluster\n", "it is a text file"),
])
def test_a_file_that_is_no_checkpoint_is_called_so(tmp_path, content, why):
    from sam2_train.engine.checkpoint import CheckpointError
    from sam2_train.model.build import build_sam2_base
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        build_sam2_base(TINY, str(path), 64)
    msg = str(e.value)
    assert msg == (f"SAM-2 checkpoint (-sam_ckpt) {path} is not a PyTorch checkpoint ({len(content)} bytes, {why}); "
                   "expected a file written by torch.save, such as an official SAM-2 .pt")
    assert "weights_only=False" not in msg


def test_a_training_checkpoint_given_as_sam_ckpt_says_what_to_use(tmp_path):
    from sam2_train.engine.checkpoint import make_checkpoint, save_checkpoint
    from sam2_train.model.build import CheckpointMismatchError, build_sam2_base
    config = cfg.parse_config(["-dataset", "demo", "-sam_config", TINY, "-image_size", "64"], "2d")
    path = tmp_path / "best.pt"
    save_checkpoint(path, make_checkpoint(torch.nn.Linear(2, 2), config.to_dict(), iteration=3))
    with pytest.raises(CheckpointMismatchError) as e:
        build_sam2_base(TINY, str(path), 64)
    assert str(e.value) == (f"-sam_ckpt {path} is a train_2d.py checkpoint, not SAM-2's weights: use -pretrain "
                            f"{path} to start a run from its weights, -resume {path} to continue that run, or "
                            f"evaluate.py / predict.py -ckpt {path}")


def test_predict_says_which_entries_of_a_folder_it_skips(tmp_path, capsys):
    import h5py

    import predict
    folder = tmp_path / "scans"
    (folder / "empty_dir").mkdir(parents=True)
    (folder / "notes.txt").write_text("scanned on the 3T\n")
    (folder / ".DS_Store").write_bytes(b"\0")
    with h5py.File(folder / "case1.h5", "w") as f:
        f["image"] = np.zeros((2, 8, 8), np.float32)
    cases = predict.find_cases(str(folder))
    assert [c.name for c in cases] == ["case1"]
    out = capsys.readouterr().out
    assert f"skipped 2 entries of {folder} that are no NIfTI, h5 or PNG-slice case: empty_dir/, notes.txt" in out


def test_overlay_montage_is_legible_for_a_small_scan_and_has_a_legend(tmp_path):
    from PIL import Image

    import predict
    from sam2_train.evaluation.vis import PALETTE
    image = np.random.default_rng(0).random((5, 40, 32)).astype(np.float32)
    pred = np.zeros((5, 40, 32), np.int64)
    pred[2, 10:20, 8:16], pred[3, 5:9, 5:9] = 1, 2
    path = tmp_path / "case.png"
    shown = predict.save_montage(str(path), image, pred, class_names=("RV", "Myo", "LV"))
    assert shown == [2, 3]
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[0] >= 256 and rgb.shape[1] >= 2 * 205            # 40 px tiles enlarged to 256 px height
    legend = rgb[256:]
    for k in range(3):                                                 # one swatch per class, in its colour
        colour = PALETTE[1 + k].astype(np.uint8)
        assert (legend == colour).all(-1).sum() >= 100, k
