"""Nothing lost when a run is stopped: Ctrl-C saves last.pt at an iteration boundary and says how to resume, a
full disk names the last good checkpoint, stale temporary files of killed saves are removed, and the PCSW rates
of a validation interval survive a resume."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.test_train_2d import ENV, ROOT, base_args, run_dirs


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from dataset.demo import ensure_demo
    return ensure_demo(str(tmp_path_factory.mktemp("data") / "demo_acdc"), "acdc", seed=0)


# ------------------------------------------------------------------ PCSW rates across a resume
class _Quiet:
    def log_scalars(self, *a, **k):
        pass


def bare_trainer():
    """A Trainer with only what its step accounting reads (no model, no data)."""
    from types import SimpleNamespace

    from sam2_train.engine.trainer import Trainer
    t = Trainer.__new__(Trainer)
    t.run, t.device, t.class_names = SimpleNamespace(log_freq=10 ** 6, max_iters=10 ** 6), torch.device("cpu"), ["A"]
    t.run_dir, t._sums, t._n, t._t0 = _Quiet(), {}, 0, time.time()
    t.load_pcsw_interval_state(None)
    return t


def feed(t, values, start=0):
    for i, v in enumerate(values):
        t.log_step(start + i + 1, {"loss": torch.tensor(1.0), "pcsw_accept_1": torch.tensor(v)})


def test_pcsw_interval_rates_survive_a_checkpoint():
    values = [0.0, 1.0, 0.5, 0.25, 1.0, 0.0]
    whole = bare_trainer()
    feed(whole, values)
    want = whole.pcsw_interval_rates()
    assert want == {"pcsw_accept_A": pytest.approx(sum(values) / 6)}
    before = bare_trainer()
    feed(before, values[:2])
    state = before.pcsw_interval_state()                   # what save() puts into the checkpoint
    after = bare_trainer()
    after.load_pcsw_interval_state(state)                  # what setup() reads back on -resume
    feed(after, values[2:], start=2)
    assert after.pcsw_interval_rates() == want             # exactly: not the mean of the last 4 steps (0.3125)
    fresh = bare_trainer()
    feed(fresh, values[2:], start=2)
    assert fresh.pcsw_interval_rates() != want


# ------------------------------------------------------------------ temporary files of killed saves
def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    from sam2_train.engine.checkpoint import remove_stale_tmp_files, unique_tmp_path
    dead = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 100000
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / f"last.pt.{dead}.0123abcd.tmp"
    mine = unique_tmp_path(tmp_path / "checkpoints" / "best.pt")            # a save in progress here
    alive = tmp_path / f"config.json.{os.getppid()}.89abcdef.tmp"           # another live process's
    other = tmp_path / "notes.1234.tmp"                                     # not one of ours
    for p in (stale, mine, alive, other):
        open(p, "wb").close()
    assert remove_stale_tmp_files(tmp_path) == [str(stale)]
    assert not stale.exists() and all(os.path.exists(p) for p in (mine, alive, other))


# ------------------------------------------------------------------ a full disk
def test_a_full_disk_names_the_last_good_checkpoint(demo_root, tmp_path, capsys, monkeypatch):
    """torch's zip writer reports ENOSPC as 'RuntimeError: [enforce fail at inline_container.cc:672] . unexpected
    pos'; the run stops with one line and exit 1, and the previous last.pt still loads."""
    import run_training
    import sam2_train.engine.checkpoint as ckpt_mod
    saves, real_save = [], torch.save

    def save(obj, f, *a, **k):
        saves.append(obj["iteration"])
        if len(saves) > 1:
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 2040")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(ckpt_mod.torch, "save", save)
    real_usage = ckpt_mod.shutil.disk_usage
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1024))
    log_dir = tmp_path / "logs"
    status = run_training.main(base_args(demo_root, log_dir, 6), "2d")
    monkeypatch.undo()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    (run,) = run_dirs(str(log_dir))
    last = os.path.join(run, "checkpoints", "last.pt")
    assert status == 1 and err == [f"error: no space left on device while writing {last}; the last good "
                                   f"checkpoint is {last}"], err
    assert torch.load(last, weights_only=True)["iteration"] == saves[0] == 2
    assert not [f for f in os.listdir(os.path.dirname(last)) if f.endswith(".tmp")]


def test_a_write_error_that_is_not_a_full_disk_says_what_it_is(tmp_path, monkeypatch):
    import errno

    import sam2_train.engine.checkpoint as ckpt_mod
    from sam2_train.engine.checkpoint import CheckpointWriteError, save_checkpoint

    def refuse(obj, f, *a, **k):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(ckpt_mod.torch, "save", refuse)
    path = tmp_path / "last.pt"
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(path, {"iteration": 1})
    assert str(e.value) == (f"cannot write it (OSError: [Errno 5] Input/output error) while writing {path}; no "
                            "earlier checkpoint of that name")


# ------------------------------------------------------------------ Ctrl-C
def test_worker_processes_ignore_ctrl_c():
    from sam2_train.engine.sampling import _worker_init
    before = signal.getsignal(signal.SIGINT)
    threads = torch.get_num_threads()
    try:
        _worker_init(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
        torch.set_num_threads(threads)


def _processes_mentioning(text: str) -> list[int]:
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def test_ctrl_c_saves_last_pt_and_says_how_to_resume(demo_root, tmp_path):
    log_dir = tmp_path / "logs"
    args = base_args(demo_root, log_dir, 400, "-num_workers", "2")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_2d.py"), *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:             # training has started: a checkpoint exists
        dirs = run_dirs(str(log_dir)) if log_dir.exists() else []
        if dirs and os.path.exists(os.path.join(dirs[0], "checkpoints", "last.pt")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    (run,) = run_dirs(str(log_dir))
    last = os.path.join(run, "checkpoints", "last.pt")
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert proc.returncode == 130 and "Traceback" not in err and len(lines) == 1, err[-3000:]
    it = torch.load(last, weights_only=True)["iteration"]
    assert lines[0] == f"interrupted at iteration {it}/400; resume with -resume {last}"
    assert 2 <= it < 400
    time.sleep(0.5)
    assert _processes_mentioning(str(log_dir)) == []                # no worker left behind
