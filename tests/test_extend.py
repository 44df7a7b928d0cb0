"""Extending the project without editing it: a method and a dataset defined here, registered, and trained for
two steps through train_2d.py's entry point (run_training.main)."""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import h5py
import numpy as np
import pytest
import torch

import cfg
import run_training
from dataset import registry as dataset_registry
from dataset.base import H5VolumeRef
from dataset.registry import DatasetSpec, register_dataset
from dataset.sources import Sources
from sam2_train.engine.config import TrainConfig
from sam2_train.engine.settings import setting, unit_float
from sam2_train.methods import registry as method_registry
from sam2_train.methods.registry import register
from sam2_train.methods.unet.base import UNetMethod

CALLS: list[float] = []     # the toy loss's weight at each call


@pytest.fixture
def clean_registries(monkeypatch):
    """The toy method and dataset are registered for one test only."""
    monkeypatch.setattr(method_registry, "_REGISTRY", dict(method_registry._REGISTRY))
    monkeypatch.setattr(dataset_registry, "_DATASETS", dict(dataset_registry._DATASETS))
    CALLS.clear()


def define_toy_method():
    @register
    class ToyConsistency(UNetMethod):
        """Labeled loss of the base, plus toy_weight x the mean squared difference of the two strong views'
        probabilities."""
        name, summary = "toy", "a test's own method"

        @dataclass(frozen=True)
        class Conf:
            toy_weight: float = setting(0.5, flag="-toy_weight", type=unit_float, group="method",
                                        help="toy: weight of the view-consistency loss")

        def unlabeled_loss(self, batch_u, iteration, cw):
            s1, s2 = (batch_u[k].flatten(0, 1) for k in ("image_s1", "image_s2"))                 # (N,1,S,S)
            p1, p2 = (self.net(x).softmax(1) for x in (s1, s2))
            CALLS.append(self.conf.toy_weight)
            consistency = (p1 - p2).pow(2).mean()
            return self.conf.toy_weight * consistency, {"toy_consistency": consistency}
    return ToyConsistency


def test_toy_method_registers_and_trains_through_train_2d(clean_registries, tmp_path, capsys):
    toy = define_toy_method()
    help_text = " ".join(cfg.build_parser().format_help().split())
    assert "-toy_weight" in help_text and "toy: weight of the view-consistency loss" in help_text
    with pytest.raises(SystemExit):     # its flag is its own: another method refuses it
        cfg.parse_config(["-student", "unet", "-method", "fixmatch", "-toy_weight", "0.3"])
    assert "-toy_weight is a setting of -method toy" in capsys.readouterr().err
    argv = ["-dataset", "demo", "-data_path", str(tmp_path / "demo"), "-student", "unet", "-method", "toy",
            "-toy_weight", "0.25", "-image_size", "64", "-b", "2", "-b_u", "4", "-slab_len", "2", "-max_iters", "2",
            "-val_every", "2", "-val_volumes", "1", "-num_workers", "0", "-device", "cpu", "-log_dir",
            str(tmp_path / "logs"), "-exp_name", "toy"]
    assert run_training.main(argv, "2d") == 0
    assert CALLS == [0.25, 0.25]                            # two steps, each with the toy loss at its flag's value
    (run,) = [d for d in glob.glob(str(tmp_path / "logs" / "toy_*")) if not os.path.islink(d)]   # not toy_latest
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["semi"]["method"] == "toy" and config["method"] == {"toy_weight": 0.25}
    assert TrainConfig.from_dict(config).method == toy.Conf(toy_weight=0.25)     # read back as the toy's Conf
    state = torch.load(os.path.join(run, "checkpoints", "last.pt"), weights_only=False)
    assert state["iteration"] == 2 and state["config"]["method"] == {"toy_weight": 0.25}


def write_toy_volumes(root: str) -> list[str]:
    """Four SSL4MIS-style volume h5 files: a bright square (label 1) on a dark background."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        image = rng.uniform(0.0, 0.2, (4, 48, 48)).astype(np.float32)
        label = np.zeros((4, 48, 48), np.uint8)
        label[:, 12 + i:30 + i, 14:32] = 1
        image[label == 1] += 0.7
        path = os.path.join(root, f"case{i}.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
        paths.append(path)
    return paths


def toy_sources(data, root, script):
    refs = [H5VolumeRef(p, os.path.splitext(os.path.basename(p))[0], 1, has_label=True)
            for p in sorted(glob.glob(os.path.join(root, "*.h5")))]
    unlabeled = [H5VolumeRef(r.image_path, r.name, 1, has_label=False) for r in refs[1:3]]
    return Sources(labeled_refs=refs[:1], val_refs=refs[3:], class_names=("square",), unlabeled_refs=unlabeled,
                   test_refs=None, test_missing="the toy dataset has no test split", info={"layout": "toy"})


def test_toy_dataset_registers_and_trains_through_train_2d(clean_registries, tmp_path):
    root = str(tmp_path / "toy")
    write_toy_volumes(root)
    register_dataset(DatasetSpec("toyset", toy_sources, lambda data, root, script: ("unit",),
                                 {"image_size": 64, "sam_config": "sam2_hiera_t", "sam_ckpt": "none"},
                                 lambda script: root))
    argv = ["-dataset", "toyset", "-student", "unet", "-method", "fixmatch", "-b", "2", "-b_u", "4",
            "-slab_len", "2", "-max_iters", "2", "-val_every", "2", "-num_workers", "0", "-device", "cpu",
            "-log_dir", str(tmp_path / "logs"), "-exp_name", "toyset"]
    assert run_training.main(argv, "2d") == 0
    (run,) = [d for d in glob.glob(str(tmp_path / "logs" / "toyset_*")) if not os.path.islink(d)]
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["data"]["dataset"] == "toyset" and config["data"]["data_path"] == root
    assert config["data"]["class_names"] == ["square"] and config["model"]["num_classes"] == 1
    assert config["model"]["image_size"] == 64 and config["data"]["intensity"] == ["unit"]
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert "square" in json.dumps(summary)
