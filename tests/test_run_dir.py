"""Run directory: config.json, metrics.csv, summary.json, TensorBoard events, resume, non-main no-op."""
import csv
import glob
import json
import os
import re

import numpy as np
import pytest
import torch

from sam2_train.engine.run_dir import RunDir


def events(path):
    return sorted(glob.glob(os.path.join(path, "events.out.tfevents.*")))


def read_scalars(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_create_writes_everything(tmp_path, capsys):
    cfg = {"exp_name": "demo", "lr": 1e-3, "hu_window": (0.0, 80.0), "seed": 0}
    run = RunDir.create(str(tmp_path / "logs"), "demo", cfg)
    assert re.fullmatch(r"demo_\d{8}-\d{6}", os.path.basename(run.path))
    assert os.path.isdir(run.checkpoints_dir) and os.path.isdir(run.vis_dir)
    assert json.load(open(run.config_path)) == {"exp_name": "demo", "lr": 1e-3, "hu_window": [0.0, 80.0], "seed": 0}
    assert run.checkpoint_path("best") == os.path.join(run.path, "checkpoints", "best.pt")

    out = run.log_scalars(5, {"loss": torch.tensor(0.25), "dice": np.float32(0.5), "lr": 1e-3}, prefix="train/")
    assert out == pytest.approx({"loss": 0.25, "dice": 0.5, "lr": 1e-3})
    with pytest.raises(ValueError, match="scalar"):
        run.log_scalars(5, {"bad": torch.ones(2)})
    run.append_metrics_row({"iteration": 100, "epoch": 1, "dice": torch.tensor(0.5)})
    run.append_metrics_row({"iteration": 200, "epoch": 2, "dice": 0.6, "hd95": 3.5})  # new column
    run.append_metrics_row({"iteration": 300, "dice": 0.7})  # missing column
    run.write_summary({"best_dice": 0.7, "iteration": np.int64(300)})
    run.log("hello from the run")
    run.close()

    rows = list(csv.DictReader(open(run.metrics_path)))
    assert list(rows[0]) == ["iteration", "epoch", "dice", "hd95"]
    assert [r["dice"] for r in rows] == ["0.5", "0.6", "0.7"]
    assert rows[0]["hd95"] == "" and rows[1]["hd95"] == "3.5" and rows[2]["epoch"] == ""
    assert json.load(open(run.summary_path)) == {"best_dice": 0.7, "iteration": 300}
    assert not glob.glob(os.path.join(run.path, "*.tmp"))
    assert "hello from the run" in capsys.readouterr().out
    assert "hello from the run" in open(os.path.join(run.path, "train.log")).read()
    assert len(events(run.path)) == 1
    acc = read_scalars(run.path)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(5, 0.25)]


def test_config_json_round_trips_the_train_config(tmp_path):
    import cfg
    from sam2_train.engine.config import TrainConfig
    config = cfg.parse_config(["-dataset", "demo", "-b", "3", "-hu_window", "5,90"], script="2d")
    run = RunDir.create(str(tmp_path), "c", config.to_dict(), tensorboard=False)
    stored = run.read_config()
    run.close()
    assert stored["format"] == 2 and stored["run"]["batch_size"] == 3 and stored["data"]["hu_window"] == [5, 90]
    assert TrainConfig.from_dict(stored, run.config_path) == config


def test_same_second_gets_a_new_directory(tmp_path):
    a = RunDir.create(str(tmp_path), "x", {}, timestamp="20250101-000000", tensorboard=False)
    b = RunDir.create(str(tmp_path), "x", {}, timestamp="20250101-000000", tensorboard=False)
    assert a.path != b.path and b.path.endswith("_2")


def test_open_resumes_and_drops_rows_after_the_checkpoint(tmp_path):
    run = RunDir.create(str(tmp_path), "r", {"a": 1})
    for it in (100, 200, 300):
        run.append_metrics_row({"iteration": it, "dice": it / 1000})
        run.log_scalars(it, {"loss": it})
    run.close()
    # the interrupted run's last checkpoint was at 200; resume from its path
    ckpt = run.checkpoint_path("last")
    open(ckpt, "wb").close()
    again = RunDir.open(ckpt, resume_iteration=200)
    assert again.path == run.path and again.read_config() == {"a": 1}
    assert [r["iteration"] for r in again.read_metrics()] == ["100", "200"]
    again.append_metrics_row({"iteration": 300, "dice": 0.31})
    again.log_scalars(300, {"loss": 301})
    again.close()
    assert [r["dice"] for r in again.read_metrics()] == ["0.1", "0.2", "0.31"]
    assert len(events(run.path)) == 2  # TensorBoard appends a new event file in the same directory
    loss = [(e.step, e.value) for e in read_scalars(run.path).Scalars("loss")]
    assert loss == [(100, 100.0), (200, 200.0), (300, 301.0)]  # the old step 300 was purged
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        RunDir.open(str(tmp_path / "missing"))


def test_non_main_rank_is_a_noop(tmp_path):
    run = RunDir.create(str(tmp_path / "logs"), "demo", {"a": 1}, is_main=False)
    assert run.path is None and run.checkpoint_path() is None
    assert run.log_scalars(1, {"x": torch.tensor(1.0)}) is None
    run.append_metrics_row({"iteration": 1})
    run.write_summary({"a": 1})
    run.log("nothing")
    run.close()
    assert not os.path.exists(tmp_path / "logs")
    assert RunDir.open(str(tmp_path / "whatever"), is_main=False).path is None


def test_run_lock_refuses_a_second_user_and_takes_over_a_dead_ones(tmp_path):
    import subprocess
    import sys

    from sam2_train.engine.run_dir import RunLockedError
    run = RunDir.create(str(tmp_path), "r", {"a": 1}, tensorboard=False)
    lock = os.path.join(run.path, "run.lock")
    assert open(lock).read().split()[0] == str(os.getpid())
    with pytest.raises(RunLockedError) as e:
        RunDir.open(run.path, resume_iteration=0, tensorboard=False)
    assert f"in use by process {os.getpid()}" in str(e.value) and lock in str(e.value)
    run.close()
    assert not os.path.exists(lock)
    # a lock file left by a process that died (SIGKILL: no clean-up) is taken over
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from sam2_train.engine.run_dir import RunDir; "
            "r = RunDir.open(sys.argv[1], tensorboard=False); import os; os._exit(0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code, run.path, root], check=True)
    dead_pid = open(lock).read().split()[0]
    assert dead_pid != str(os.getpid())
    again = RunDir.open(run.path, resume_iteration=0, tensorboard=False)
    assert open(lock).read().split()[0] == str(os.getpid())
    again.close()


def test_record_resume_and_unique_dirs(tmp_path):
    from sam2_train.engine.run_dir import make_unique_dir
    run = RunDir.create(str(tmp_path), "r", {"b": 4}, tensorboard=False)
    run.record_resume({"iteration": 2, "changed": {"b": [4, 2]}})
    run.record_resume({"iteration": 5, "changed": {}})
    cfg = run.read_config()
    assert cfg["b"] == 4 and cfg["resumed"] == [{"iteration": 2, "changed": {"b": [4, 2]}},
                                                {"iteration": 5, "changed": {}}]
    run.close()
    base = str(tmp_path / "eval_x")
    assert [make_unique_dir(base) for _ in range(3)] == [base, base + "_2", base + "_3"]
