"""reproduce.py: the paper grid and its exact commands (--dry-run), the tables (published numbers beside
ours, protocols named, "—" for anything missing, UniMatch val+test merging), and the --quick grid end to
end on demo data: training runs, evaluate.py, tables, then skip of a finished run and resume of an
unfinished one from its last.pt."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")

import reproduce  # noqa: E402


def test_dry_run_lists_the_paper_grid(capsys, tmp_path):
    assert reproduce.main(["acdc", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"15 runs for table acdc")
    cmds = [l for l in out.splitlines() if "train_2d.py" in l]
    assert len(cmds) == 15
    for c in cmds:
        for flag in ("-sam_config sam2_hiera_s", "-sam_ckpt ./checkpoints/sam2_hiera_small.pt", "-image_size 1024",
                     "-b 4", "-dataset acdc"):
            assert flag in c, (flag, c)
    assert sum("-labeled_num 3 " in c for c in cmds) == 5
    assert sum("-method sss -dfe 0" in c for c in cmds) == 3 and sum("-method sss -pcsw 0" in c for c in cmds) == 3
    assert sum("-method fixmatch" in c for c in cmds) == 3 and sum("-method supervised" in c for c in cmds) == 3
    assert "-exp_name acdc_sss_no_pcsw_l7 -log_dir " + os.path.join(str(tmp_path), "runs", "acdc_sss_no_pcsw_l7") in out
    evals = [l for l in out.splitlines() if "evaluate.py" in l]
    assert len(evals) == 15 * 3 and all("best.pt" in l for l in evals)  # ssl4mis test + unimatch val, test
    assert not os.path.exists(os.path.join(str(tmp_path), "runs"))  # nothing ran

    assert reproduce.main(["bhsd", "--dry-run", "--methods", "sss", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    cmds = [l for l in out.splitlines() if "train_3d.py" in l]
    assert [c.split("-labeled_ratio ")[1].split()[0] for c in cmds] == ["0.05", "0.1", "0.25", "1"]
    assert all("-prompt bbox -prompt_freq 2" in c and "-dataset bhsd" in c for c in cmds)


def _write_eval(run_dir, protocol, split, dice, cases=None):
    d = os.path.join(run_dir, "eval", f"{protocol}_{split}", "eval_x")
    os.makedirs(d)
    summ = {"dice": dice, "hd95": {k: 2.0 for k in dice}, "asd": {k: 0.5 for k in dice},
            "protocol": protocol, "split": split, "num_volumes": 2, "distance_units": "voxels"}
    json.dump(summ, open(os.path.join(d, "summary.json"), "w"))
    if cases:
        with open(os.path.join(d, "cases.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["case", "class", "dice"])
            w.writeheader()
            w.writerows(cases)


def test_tables_put_ours_beside_published_and_never_invent(tmp_path, capsys):
    out = tmp_path / "out"
    rd = out / "runs" / "acdc_sss_l3" / "acdc_sss_l3_20260101-000000"
    os.makedirs(rd)
    json.dump({}, open(rd / "config.json", "w"))
    json.dump({"dice": {}}, open(rd / "summary.json", "w"))
    _write_eval(str(rd), "ssl4mis", "test", {"RV": 0.85, "Myo": 0.80, "LV": 0.90, "mean": 0.85})
    nan = float("nan")
    _write_eval(str(rd), "unimatch", "val", {"RV": 0.5, "Myo": 0.5, "LV": 0.5, "mean": 0.5},
                [{"case": "a", "class": "RV", "dice": 0.6}, {"case": "a", "class": "Myo", "dice": 0.7},
                 {"case": "a", "class": "LV", "dice": nan}])
    _write_eval(str(rd), "unimatch", "test", {"RV": 0.5, "Myo": 0.5, "LV": 0.5, "mean": 0.5},
                [{"case": "b", "class": "RV", "dice": 1.0}, {"case": "b", "class": "Myo", "dice": 0.9},
                 {"case": "b", "class": "LV", "dice": 0.8}])
    assert reproduce.main(["acdc", "--tables_only", "--out", str(out), "--methods", "supervised", "sss"]) == 0
    md = open(out / "acdc.md").read()
    rows = {tuple(c.strip() for c in l.strip("|").split("|")[:2]): [c.strip() for c in l.strip("|").split("|")[2:]]
            for l in md.splitlines() if l.startswith("| ") and not l.startswith("| Method")}
    # columns: 1 case, 3 cases, 7 cases
    assert rows[("ABD", "SSL4MIS test, published")] == ["—", "88.96", "89.81"]
    assert rows[("SAM-Match", "SSL4MIS test, published")] == ["—", "89.36", "—"]
    assert rows[("UniMatch", "UniMatch (val+test merged), published")] == ["—", "88.90", "89.90"]
    assert rows[("SSS (ours)", "SSL4MIS test, this repo")] == ["—", "85.00", "—"]
    # merged val+test: RV (0.6+1.0)/2, Myo (0.7+0.9)/2, LV 0.8 (the NaN volume left out) -> mean 0.8
    assert rows[("SSS (ours)", "UniMatch (val+test merged), this repo")] == ["—", "80.00", "—"]
    assert rows[("Supervised (SAM-2, labeled only)", "SSL4MIS test, this repo")] == ["—", "—", "—"]
    assert "| SSS (ours) | 3 cases | SSL4MIS test, this repo | 85.00 | 80.00 | 90.00 | 85.00 | 2.00" in md
    table = list(csv.reader(open(out / "acdc.csv")))
    assert table[0] == ["Method", "Protocol", "1 case: Dice %", "3 cases: Dice %", "7 cases: Dice %"]
    assert ["SSS (ours)", "SSL4MIS test, this repo", "—", "85.00", "—"] in table
    # an evaluation older than the run's summary.json (a resumed run replaced best.pt) does not count
    os.utime(rd / "summary.json", (2e9, 2e9))
    assert reproduce.main(["acdc", "--tables_only", "--out", str(out), "--methods", "sss"]) == 0
    assert "| SSS (ours) | SSL4MIS test, this repo | — | — | — |" in open(out / "acdc.md").read()


def _quick(out, *extra):
    return subprocess.run([sys.executable, os.path.join(ROOT, "reproduce.py"), "acdc", "--quick", "--labeled", "1", "2",
                           "--methods", "supervised", "--out", str(out), *extra],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)


def test_quick_grid_runs_skips_and_resumes(tmp_path):
    out = tmp_path / "q"
    r = _quick(out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = open(out / "acdc.md").read()
    (line,) = [l for l in md.splitlines() if l.startswith("| Supervised (SAM-2, labeled only) | SSL4MIS test, this repo |")]
    for value in line.strip("|").split("|")[2:4]:  # 1 case, 2 cases
        assert value.strip() != "—" and 0.0 <= float(value) <= 100.0, line
    assert os.path.isfile(out / "acdc.csv")
    runs = {n: reproduce.finished_dir(reproduce.Run("acdc", "supervised", n, f"acdc_supervised_l{n}",
                                                    str(out / "runs" / f"acdc_supervised_l{n}"))) for n in (1, 2)}
    assert all(runs.values())
    for rd in runs.values():
        assert reproduce.eval_summary_path(rd, "ssl4mis", "test")
        assert json.load(open(reproduce.eval_summary_path(rd, "ssl4mis", "test")))["protocol"] == "ssl4mis"

    # The 2-case run "did not finish": it is resumed from its last.pt (and trained one step further), the
    # finished 1-case run is skipped, and the resumed run is evaluated again.
    sss = runs[2]
    os.remove(os.path.join(sss, "summary.json"))
    last = os.path.join(sss, "checkpoints", "last.pt")
    assert torch.load(last, weights_only=True)["iteration"] == 2
    r = _quick(out, "--quick_iters", "3")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"acdc_supervised_l1: finished ({runs[1]}), skipped" in r.stdout
    assert f"acdc_supervised_l2: resuming from {last}" in r.stdout
    assert f"resumed from {last} at iteration 2/3" in open(os.path.join(sss, "train.log")).read()
    assert torch.load(last, weights_only=True)["iteration"] == 3
    assert os.path.isfile(os.path.join(sss, "summary.json"))
    assert len(os.listdir(os.path.join(sss, "eval", "ssl4mis_test"))) == 2  # re-evaluated after resuming
    assert len(os.listdir(os.path.join(runs[1], "eval", "ssl4mis_test"))) == 1
