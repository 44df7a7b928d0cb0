"""Atomic checkpoint writes, clear load errors, RNG capture/restore, full resume state, config checks."""
import argparse
import functools
import os
import random

import numpy as np
import pytest
import torch

from sam2_train.engine.checkpoint import (CHECKPOINT_VERSION, CheckpointError, CheckpointNotFoundError,
                                          ConfigMismatchError, capture_rng_state, check_pretrain_config,
                                          gather_rng_states, load_checkpoint, make_checkpoint, model_state_dict,
                                          restore_rng_state, restore_training_state, save_checkpoint, saved_config,
                                          to_plain)
from sam2_train.engine.config import ConfigFormatError, TrainConfig
from sam2_train.engine.ema import ModelEMA
from sam2_train.engine.schedule import OptimConf, build_optimizer, build_scheduler


class Boom:
    """Raises while being pickled, i.e. in the middle of torch.save."""

    def __reduce__(self):
        raise RuntimeError("boom while pickling")


def tiny():
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))


@functools.lru_cache(maxsize=1)
def _base_config() -> TrainConfig:
    import cfg
    return cfg.parse_config(["-dataset", "demo", "-sam_config", "sam2_hiera_t", "-image_size", "128", "-dfe", "1",
                             "-dfe_levels", "0,1,2", "-method", "sss", "-seed", "0", "-lr", "1e-2",
                             "-weight_decay", "1e-4", "-encoder_lr_mult", "0.1", "-sched", "poly"], script="2d")


def config_of(**sections) -> TrainConfig:
    """The demo run's config with fields of sections replaced: ``config_of(model={"image_size": 256})``."""
    return _base_config().replace(**sections)


def test_atomic_save_failure_keeps_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "version": 1})
    before = path.read_bytes()
    # an object that raises during pickling (bypassing to_plain's type check)
    monkeypatch.setattr("sam2_train.engine.checkpoint.to_plain", lambda s, *a: s)
    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "bad": Boom(), "version": 1})
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["last.pt"]  # no .tmp left behind
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_save_refuses_non_plain_objects_before_writing(tmp_path):
    path = tmp_path / "x.pt"
    with pytest.raises(TypeError, match=r"state\['config'\]\['f'\].*weights_only"):
        save_checkpoint(path, {"model": {}, "config": {"f": object()}, "version": 1})
    assert not path.exists() and not (tmp_path / "x.pt.tmp").exists()
    plain = to_plain({"a": np.float64(0.5), "b": np.arange(3), "c": argparse.Namespace(k=(1, 2))})
    assert plain["a"] == 0.5 and isinstance(plain["a"], float)
    assert torch.equal(plain["b"], torch.arange(3)) and plain["c"] == {"k": (1, 2)}


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointNotFoundError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(missing)
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.randn(1000)}, "version": 1})
    data = good.read_bytes()
    trunc = tmp_path / "half.pt"
    trunc.write_bytes(data[: len(data) // 2])  # a half-written file
    with pytest.raises(CheckpointError, match="half.pt is corrupt or truncated"):
        load_checkpoint(trunc)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pt is empty"):
        load_checkpoint(empty)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)


def test_load_rejects_foreign_files(tmp_path):
    official = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": {"w": torch.ones(1)}}, official)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project.*-sam_ckpt"):
        load_checkpoint(official)
    assert "w" in load_checkpoint(official, ours=False)["model"]
    other = tmp_path / "list.pt"
    torch.save([1, 2], other)
    with pytest.raises(CheckpointError, match="list.pt is not a model checkpoint"):
        load_checkpoint(other)
    pickled = tmp_path / "pickled.pt"
    torch.save({"model": {}, "version": 1, "ns": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(CheckpointError, match="pickled.pt holds objects that torch.load\\(weights_only=True\\)"):
        load_checkpoint(pickled)
    newer = tmp_path / "newer.pt"
    torch.save({"model": {}, "version": CHECKPOINT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(newer)


def _draw():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
            torch.rand(3).tolist(), torch.randn(2).tolist())


def test_rng_capture_restore_reproduces(tmp_path):
    random.seed(1); np.random.seed(2); torch.manual_seed(3)
    random.gauss(0, 1); np.random.randn()  # leave cached gaussians in the states
    state = capture_rng_state()
    # through a weights_only round trip on disk
    save_checkpoint(tmp_path / "r.pt", {"model": {}, "rng": gather_rng_states(), "version": 1})
    expected = _draw()
    _draw(); _draw()
    restore_rng_state(state)
    assert _draw() == expected
    _draw()
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert _draw() == expected
    with pytest.warns(UserWarning, match="RNG states of 1 process"):
        assert restore_rng_state({"per_rank": [state]}, rank=1) is False


def test_full_resume_round_trip_continues_identically(tmp_path):
    """Model + AdamW + poly LambdaLR + EMA + RNG saved at step 3 resume to the same state as 6 straight steps."""
    def run(steps, start_state=None, save_at=None):
        torch.manual_seed(0)
        model = tiny()
        conf = OptimConf(lr=1e-2, weight_decay=1e-4, encoder_lr_mult=0.1)
        opt = build_optimizer(model, conf)
        sched = build_scheduler(opt, conf, total_iters=10)
        ema = ModelEMA(model, 0.9)
        start = 0
        if start_state is not None:
            start = restore_training_state(start_state, model, optimizer=opt, scheduler=sched, ema=ema)["iteration"]
        for it in range(start, steps):
            x = torch.randn(5, 3)  # from the global RNG: restored on resume
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            ema.update(model)
            if save_at == it + 1:
                save_checkpoint(tmp_path / "last.pt", make_checkpoint(
                    model, config_of().to_dict(), optimizer=opt, scheduler=sched, ema=ema, rng=gather_rng_states(),
                    iteration=it + 1, epoch=0, best={"metric": "dice", "value": np.float32(0.5)}))
        return model, ema, sched
    m_full, e_full, s_full = run(6, save_at=3)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == 3 and state["version"] == 1 and state["best"]["value"] == 0.5
    saved = TrainConfig.from_dict(state["config"], "last.pt")   # the config round-trips, tuples kept
    assert saved == config_of() and saved.model.dfe_levels == (0, 1, 2)
    assert set(state["model"]) == set(tiny().state_dict())
    torch.manual_seed(123)  # a resumed process starts from other RNG states
    m_res, e_res, s_res = run(6, start_state=state)
    for a, b in zip(m_full.state_dict().values(), m_res.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(e_full.module.state_dict().values(), e_res.module.state_dict().values()):
        assert torch.equal(a, b)
    assert s_full.get_last_lr() == s_res.get_last_lr() and e_res.step == 6


def test_model_state_dict_strips_wrappers():
    m = tiny()
    dp = torch.nn.DataParallel(m)
    assert list(model_state_dict(dp)) == list(m.state_dict())


def test_config_compat_lists_all_differences():
    saved = config_of(model={"dfe_levels": [0, 1, 2]}, optim={"lr": 1.0})
    assert saved.differences(config_of(optim={"lr": 5.0}), kinds=("arch",)) == []  # lr is not architecture
    check_pretrain_config(saved, config_of(optim={"lr": 5.0}))                      # tuple == list
    bad = config_of(model={"image_size": 256, "sam_config": "sam2_hiera_s", "dfe": False})
    with pytest.raises(ConfigMismatchError) as e:
        check_pretrain_config(saved, bad)
    msg = str(e.value)
    assert "(the checkpoint -> this run)" in msg
    for part in ("-sam_config: 'sam2_hiera_t' -> 'sam2_hiera_s'", "-image_size: 128 -> 256", "-dfe: True -> False"):
        assert part in msg
    assert "dataset" not in msg


def test_resume_config_lists_changed_flags_and_force_accepts(tmp_path):
    from sam2_train.engine.checkpoint import check_resume_config
    saved = config_of(run={"seed": 0, "batch_size": 4, "max_iters": 300, "num_workers": 4, "log_dir": "logs"},
                      data={"data_path": "./data/demo_acdc", "hu_window": [0.0, 80.0]}, optim={"lr": 1e-3})
    same = config_of(run={"seed": 0, "batch_size": 4, "max_iters": 300, "num_workers": 0, "log_dir": "elsewhere"},
                     data={"data_path": "data/demo_acdc/", "hu_window": (0.0, 80.0)}, optim={"lr": 1e-3})
    assert check_resume_config(saved, same) == {}  # workers, log_dir, path spelling do not change the run
    changed = config_of(run={"seed": 1, "batch_size": 2, "max_iters": 600},
                        data={"data_path": "./data/other", "hu_window": (0.0, 80.0)}, optim={"lr": 1e-3})
    with pytest.raises(ConfigMismatchError) as e:
        check_resume_config(saved, changed, source="run/last.pt")
    msg = str(e.value)
    assert "\n" not in msg and "run/last.pt" in msg and "-resume_force 1" in msg
    for part in ("-b: 4 -> 2", "-max_iters: 300 -> 600", "-seed: 0 -> 1",
                 "-data_path: './data/demo_acdc' -> './data/other'"):
        assert part in msg, msg
    assert check_resume_config(saved, changed, force=True) == {
        "-seed": [0, 1], "-b": [4, 2], "-max_iters": [300, 600], "-data_path": ["./data/demo_acdc", "./data/other"]}
    # an architecture change cannot be forced: the weights would not fit
    with pytest.raises(ConfigMismatchError, match="-image_size"):
        check_resume_config(saved, config_of(model={"image_size": 256}, run={"batch_size": 4}), force=True)


def test_checkpoint_before_the_config_format_is_one_clear_line(tmp_path, capsys):
    """A checkpoint of the old flat flag dict (before TrainConfig.to_dict) is refused in one line naming it."""
    old = tmp_path / "old.pt"
    flat = {"sam_config": "sam2_hiera_t", "image_size": 128, "dataset": "demo", "dfe": True, "dfe_levels": (0, 1, 2),
            "method": "sss", "script": "2d", "b": 4, "lr": 1e-3}
    save_checkpoint(old, {"model": {"w": torch.ones(1)}, "config": flat, "version": 1})
    state = load_checkpoint(old)                                    # the file itself is fine
    for read in (lambda: saved_config(state, str(old)), lambda: TrainConfig.from_dict(state["config"], str(old))):
        with pytest.raises(ConfigFormatError) as e:
            read()
        msg = str(e.value)
        assert "\n" not in msg and str(old) in msg and "predates the config format" in msg, msg
        assert "flat flag list" in msg
    # a stored config of an older format number says which it found
    with pytest.raises(ConfigFormatError, match="format 2, found 1"):
        TrainConfig.from_dict(dict(config_of().to_dict(), format=1), "x.pt")
    # evaluate.py: exit status 2 and that one line, no traceback
    import evaluate
    assert evaluate.main(["-ckpt", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "predates the config format" in err, err


def test_world_size_change_is_explained():
    from sam2_train.engine.checkpoint import saved_world_size, world_size_change_message
    state = {"rng": {"per_rank": [capture_rng_state(), capture_rng_state()]}}
    assert saved_world_size(state) == 2 and saved_world_size({"world_size": 4, **state}) == 4
    assert saved_world_size({"rng": None}) is None
    assert world_size_change_message(2, 2) is None and world_size_change_message(None, 2) is None
    msg = world_size_change_message(2, 1, batch=4, source="last.pt")
    assert "last.pt was saved by 2 process(es), this run has 1" in msg
    assert "shard" in msg and "random" in msg and "4 x 1 = 4 instead of 4 x 2 = 8" in msg


def test_temporary_names_are_unique_and_best_is_a_copy(tmp_path):
    from sam2_train.engine.checkpoint import copy_file_atomic, unique_tmp_path
    names = {unique_tmp_path(tmp_path / "last.pt") for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(str(tmp_path / "last.pt.")) and n.endswith(".tmp") for n in names)
    # a stale temporary file of another process (same old fixed name) does not disturb a save
    (tmp_path / "last.pt.tmp").write_bytes(b"junk")
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.arange(3.0)}, "version": 1})
    copy_file_atomic(tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt", "last.pt.tmp"]
