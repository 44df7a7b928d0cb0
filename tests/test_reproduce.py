"""reproduce.py: the grid read from configs/paper.yaml and its exact commands (--dry-run: the scripts'
presets, one budget for every cell), the published numbers of configs/published.csv, the tables (published
beside ours, protocols named, "—" for anything missing, UniMatch val+test merging, runs finished under
another protocol flagged), and the --quick grid end to end on demo data: training runs, evaluate.py,
tables, then skip of a finished run and resume of an unfinished one from its last.pt."""
import csv
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import cfg
import reproduce
from sam2_train.evaluation import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")


def _flag(cmd: str, name: str) -> str:
    return re.search(rf" -{name} (\S+)", cmd).group(1)


def _resolved(cmd: str, script: str):
    """The script's own reading of a printed training command: its TrainConfig."""
    return cfg.parse_config(cmd.split(f"train_{script}.py ")[1].split(), script)


def test_dry_run_lists_the_paper_grid_with_one_budget(capsys, tmp_path):
    """One budget, one validation cadence and one inference mode per table, said in its header: the SAM-2 rows
    (the w/o-PCSW ablation too) with PCSW prompts, the lightweight students with their own prediction and
    Knowledge Mining's refined rows with SAM-2's, whose guide runs at 1024 px."""
    assert reproduce.main(["acdc", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (
        f"18 runs for table acdc (output {tmp_path}); every cell: -max_iters 30000 -val_every 1000, evaluated with "
        "-weights ema; -infer pcsw for every row")
    cmds = [l for l in out.splitlines() if "train_2d.py" in l]
    assert len(cmds) == 18 and not any("-student" in c for c in cmds)
    for c in cmds:  # -dataset and what the cell sets; the script fills the paper's settings itself
        assert "-dataset acdc" in c and not re.search(r" -(image_size|sam_config|sam_ckpt|b) ", c), c
        a = _resolved(c, "2d")
        assert (a.model.sam_config, a.model.sam_ckpt, a.model.image_size, a.method.out_size, a.run.batch_size,
                a.infer.infer) == (
            "sam2_hiera_s", os.path.join("checkpoints", "sam2_hiera_small.pt"), 1024, 1024, 4, "pcsw")
    assert {_flag(c, "max_iters") for c in cmds} == {"30000"} and {_flag(c, "val_every") for c in cmds} == {"1000"}
    assert {_flag(c, "infer") for c in cmds} == {"pcsw"}
    assert sum("-labeled_num 3 " in c for c in cmds) == 6
    assert sum("-method sss -dfe 0" in c for c in cmds) == 3 and sum("-method sss -pcsw 0" in c for c in cmds) == 3
    assert sum("-method fixmatch" in c for c in cmds) == 3 and sum("-method supervised" in c for c in cmds) == 3
    assert sum("-method sss_labeled_only" in c for c in cmds) == 3
    assert "-exp_name acdc_sss_no_pcsw_l7 -log_dir " + os.path.join(str(tmp_path), "runs", "acdc_sss_no_pcsw_l7") in out
    evals = [l for l in out.splitlines() if "evaluate.py" in l]
    assert len(evals) == 18 * 3 and all("best.pt" in l and "-weights ema" in l and "-infer pcsw" in l for l in evals)
    assert sum("-protocol unimatch" in l for l in evals) == 36 and sum("-protocol ssl4mis" in l for l in evals) == 18
    assert not os.path.exists(os.path.join(str(tmp_path), "runs"))  # nothing ran

    for table, infer, rows in (("acdc_students", "student", 7), ("acdc_sam_refine", "sam_refine", 3)):
        assert reproduce.main([table, "--dry-run", "--out", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0] == (
            f"{rows * 3} runs for table {table} (output {tmp_path}); every cell: -max_iters 30000 -val_every 1000, "
            f"evaluated with -weights ema; -infer {infer} for every row; SAM-2 guide at -guide_size 1024")
        light = [l for l in out.splitlines() if "train_2d.py" in l]
        assert len(light) == rows * 3
        for c in light:  # the preset's unet block: SSL4MIS's recipe; the SAM-2 guide is the paper's, at 1024 px
            a = _resolved(c, "2d")
            assert (a.model.student in ("unet", "unetpp"), a.model.image_size, a.run.batch_size, a.optim.optim,
                    a.optim.lr, a.model.sam_config, a.model.guide_size, a.infer.infer) == (
                        True, 256, 12, "sgd", 0.01, "sam2_hiera_s", 1024, infer)
        evals = [l for l in out.splitlines() if "evaluate.py" in l]
        assert evals and all(f"-infer {infer}" in l for l in evals)
    assert {_flag(c, "method") for c in light} == {"supervised", "km_onetime", "km_continuous"}

    assert reproduce.main(["acdc", "--dry-run", "--max_iters", "500", "--out", str(tmp_path)]) == 0
    cmds = [l for l in capsys.readouterr().out.splitlines() if "train_2d.py" in l]
    assert len(cmds) == 18 and {_flag(c, "max_iters") for c in cmds} == {"500"}

    assert reproduce.main(["bhsd", "--dry-run", "--methods", "sss", "--out", str(tmp_path)]) == 0
    cmds = [l for l in capsys.readouterr().out.splitlines() if "train_3d.py" in l]
    assert [_flag(c, "labeled_ratio") for c in cmds] == ["0.05", "0.1", "0.25", "1"]
    assert all("-dataset bhsd" in c and _flag(c, "max_iters") == "20000" for c in cmds)
    assert all((a.method.prompt, a.infer.prompt_freq, a.model.image_size) == ("bbox", 2, 1024)
               for a in (_resolved(c, "3d") for c in cmds))


def test_acdc_cpu_table_same_flags_for_every_method(capsys, tmp_path):
    """The CPU method check: 2 seeds for the main methods, 1 for the ablations, one set of flags, >= 1500
    iterations, and the last checkpoint scored on the sample's validation volumes (nothing selected on them)."""
    assert reproduce.main(["acdc_cpu", "--dry-run", "--out", str(tmp_path), "--data_path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    cmds = [l for l in out.splitlines() if "train_2d.py" in l]
    keys = [_flag(c, "exp_name") for c in cmds]
    assert keys == ["acdc_cpu_supervised_l3", "acdc_cpu_supervised_l3_s1", "acdc_cpu_sss_labeled_only_l3",
                    "acdc_cpu_sss_labeled_only_l3_s1", "acdc_cpu_fixmatch_l3",
                    "acdc_cpu_fixmatch_l3_s1", "acdc_cpu_sss_l3", "acdc_cpu_sss_l3_s1", "acdc_cpu_sss_no_dfe_l3",
                    "acdc_cpu_sss_no_pcsw_l3"]
    for c in cmds:
        a = _resolved(c, "2d")
        assert (a.model.sam_config, a.model.sam_ckpt, a.model.image_size, a.optim.encoder_lr_mult, a.data.labeled_num,
                a.run.max_iters, a.semi.rampup, a.run.val_every) == ("sam2_hiera_t", "none", 128, 0.0, 3, 1500, 300,
                                                                      250), c
    evals = [l for l in out.splitlines() if "evaluate.py" in l]
    assert len(evals) == 10 and all("last.pt" in l and "-split val" in l and "-weights ema" in l for l in evals)
    assert reproduce.main(["acdc_cpu", "--dry-run", "--out", str(tmp_path), "--seeds", "1",
                           "--methods", "supervised", "sss"]) == 0
    cmds = [l for l in capsys.readouterr().out.splitlines() if "train_2d.py" in l]
    assert [_flag(c, "exp_name") for c in cmds] == ["acdc_cpu_supervised_l3_s1", "acdc_cpu_sss_l3_s1"]


def test_a_table_is_data_only(tmp_path, capsys):
    """A new table (here: seeds, a row with its own seeds) needs only YAML; bad rows are refused."""
    conf = OmegaConf.load(reproduce.CONFIG)
    conf.tables.cpu = dict(conf.tables.acdc, title="CPU", seeds=[0, 1], rows=["supervised", "sss_no_dfe"],
                           flags={"sam_config": "sam2_hiera_t", "sam_ckpt": "none", "image_size": 128},
                           budget={"max_iters": 1500, "val_every": 100, "infer": "pcsw"})
    conf.rows.sss_no_dfe.seeds = [0]
    OmegaConf.save(conf, tmp_path / "grid.yaml")
    assert reproduce.main(["cpu", "--dry-run", "--columns", "l3", "--config", str(tmp_path / "grid.yaml"),
                           "--out", str(tmp_path)]) == 0
    cmds = [l for l in capsys.readouterr().out.splitlines() if "train_2d.py" in l]
    assert [_flag(c, "exp_name") for c in cmds] == ["cpu_supervised_l3", "cpu_supervised_l3_s1", "cpu_sss_no_dfe_l3"]
    assert ["-seed 1" in c for c in cmds] == [False, True, False]
    assert all("-sam_config sam2_hiera_t -sam_ckpt none -image_size 128" in c and _flag(c, "max_iters") == "1500"
               for c in cmds)
    conf.rows.sss.budget = {"max_iters": 10}  # a row may not change the table's budget ...
    OmegaConf.save(conf, tmp_path / "bad.yaml")
    with pytest.raises(SystemExit, match="row sss may set label, flags and seeds only"):
        reproduce.main(["cpu", "--dry-run", "--config", str(tmp_path / "bad.yaml")])
    del conf.rows.sss.budget
    conf.rows.sss.infer = "boxes"             # ... nor its inference mode: one mode per table
    OmegaConf.save(conf, tmp_path / "bad.yaml")
    with pytest.raises(SystemExit, match="inference mode are the table's"):
        reproduce.main(["cpu", "--dry-run", "--config", str(tmp_path / "bad.yaml")])
    assert tables.fmt([0.8, 0.9], 100) == "85.00 ± 7.07" and tables.fmt([float("nan"), None]) == "—"


def test_published_numbers_name_their_source():
    with open(reproduce.PUBLISHED, newline="") as f:
        rows = list(csv.DictReader(f))
    conf = OmegaConf.load(reproduce.CONFIG)
    got = {(r["benchmark"], r["method"], float(r["setting"])): float(r["dice"]) for r in rows}
    for method, three, seven in [("ABD", 88.96, 89.81), ("BCP", 87.59, 88.84), ("AD-MT", 88.75, 89.46),
                                 ("TraCoCo", 89.46, 90.44), ("OPMatch", 89.72, 90.50), ("AdaMix", 89.86, 90.85),
                                 ("UniMatch", 88.9, 89.9)]:
        assert (got[("acdc", method, 3.0)], got[("acdc", method, 7.0)]) == (three, seven), method
    assert got[("acdc", "SAM-Match", 3.0)] == 89.36 and got[("acdc", "CPC-SAM", 3.0)] == 87.95
    assert got[("acdc", "U-Net, labeled only (SSL4MIS)", 70.0)] == 91.44
    assert got[("bhsd", "SSS (paper)", 1.0)] == 53.15 and got[("bhsd", "previous best (as cited by SSS)", 1.0)] == 49.5
    assert all(r["source"].strip() and r["protocol"] in conf.protocols for r in rows)
    assert {r["protocol"] for r in rows if r["method"] == "UniMatch"} == {"unimatch"}


def _write_eval(run_dir, protocol, split, dice, cases=None):
    d = os.path.join(run_dir, "eval", f"{protocol}_{split}", "eval_x")
    os.makedirs(d)
    summ = {"dice": dice, "hd95": {k: 2.0 for k in dice}, "asd": {k: 0.5 for k in dice}, "weights": "ema",
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
    json.dump({"max_iters": 30000}, open(rd / "config.json", "w"))
    json.dump({"dice": {}}, open(rd / "summary.json", "w"))
    _write_eval(str(rd), "ssl4mis", "test", {"RV": 0.85, "Myo": 0.80, "LV": 0.90, "mean": 0.85})
    nan = float("nan")
    _write_eval(str(rd), "unimatch", "val", {"RV": 0.5, "Myo": 0.5, "LV": 0.5, "mean": 0.5},
                [{"case": "a", "class": "RV", "dice": 0.6}, {"case": "a", "class": "Myo", "dice": 0.7},
                 {"case": "a", "class": "LV", "dice": nan}])
    _write_eval(str(rd), "unimatch", "test", {"RV": 0.5, "Myo": 0.5, "LV": 0.5, "mean": 0.5},
                [{"case": "b", "class": "RV", "dice": 1.0}, {"case": "b", "class": "Myo", "dice": 0.9},
                 {"case": "b", "class": "LV", "dice": 0.8}])
    args = ["acdc", "--tables_only", "--out", str(out), "--methods", "supervised", "sss", "sss_no_pcsw"]
    assert reproduce.main(args) == 0
    md = open(out / "acdc.md").read()
    rows = {tuple(c.strip() for c in l.strip("|").split("|")[:2]): [c.strip() for c in l.strip("|").split("|")[2:]]
            for l in md.splitlines() if l.startswith("| ") and not l.startswith("| Method")}
    # columns: 1 case, 3 cases, 7 cases
    assert rows[("ABD", "SSL4MIS test, published")] == ["—", "88.96", "89.81"]
    assert rows[("SAM-Match", "SSL4MIS test, published")] == ["—", "89.36", "—"]
    assert rows[("UniMatch", "UniMatch (val+test merged), published")] == ["—", "88.90", "89.90"]
    assert not any(k[0].startswith("U-Net") and v[2] == "91.44" for k, v in rows.items())  # 70 cases: no column
    assert rows[("SSS (ours)", "SSL4MIS test, this repo")] == ["—", "85.00", "—"]
    # merged val+test: RV (0.6+1.0)/2, Myo (0.7+0.9)/2, LV 0.8 (the NaN volume left out) -> mean 0.8
    assert rows[("SSS (ours)", "UniMatch (val+test merged), this repo")] == ["—", "80.00", "—"]
    assert rows[("Supervised (SAM-2, labeled only)", "SSL4MIS test, this repo")] == ["—", "—", "—"]
    assert "| SSS (ours) | 3 cases | SSL4MIS test, this repo | 85.00 | 80.00 | 90.00 | 85.00 | 2.00" in md
    assert "- ABD (Chi et al., CVPR 2024" in md
    assert ("**Same protocol in every cell:** a budget of 30000 iterations (`-max_iters`), validation every 1000 "
            "iterations (`-val_every`), evaluated from the EMA of the weights for every method (`-weights ema`), "
            "validated and reported with `-infer pcsw` for every row") in md
    assert "Not under this protocol" not in md
    table = list(csv.reader(open(out / "acdc.csv")))
    assert table[0] == ["Method", "Protocol", "1 case: Dice %", "3 cases: Dice %", "7 cases: Dice %"]
    assert ["SSS (ours)", "SSL4MIS test, this repo", "—", "85.00", "—"] in table
    # a run finished under another budget is flagged, not silently mixed in
    assert reproduce.main(args + ["--max_iters", "20000"]) == 0
    assert "**Not under this protocol** (finished with other settings): acdc_sss_l3: max_iters 30000 (table: 20000)" \
        in open(out / "acdc.md").read()
    # an evaluation older than the run's summary.json (a resumed run replaced best.pt) does not count
    os.utime(rd / "summary.json", (2e9, 2e9))
    assert reproduce.main(["acdc", "--tables_only", "--out", str(out), "--methods", "sss"]) == 0
    assert "| SSS (ours) | SSL4MIS test, this repo | — | — | — |" in open(out / "acdc.md").read()


def _grid_for_this_checkout(path) -> str:
    """configs/paper.yaml less the protocol flags this checkout's train/evaluate scripts do not know yet
    (-val_every, -infer), so that the quick grid runs end to end on any checkout of the fairness change."""
    conf = OmegaConf.load(reproduce.CONFIG)
    known = cfg.build_parser()._option_string_actions
    for flag in [f for f in ("val_every", "infer") if f"-{f}" not in known]:
        for table in conf.tables.values():
            table.budget.pop(flag, None)
            table.quick.budget.pop(flag, None)
        for row in conf.rows.values():
            row.pop(flag, None)
    OmegaConf.save(conf, path)
    return str(path)


def _quick(out, grid, *extra):
    # fixmatch: a semi-supervised row with an EMA teacher (every cell is evaluated with -weights ema)
    return subprocess.run([sys.executable, os.path.join(ROOT, "reproduce.py"), "acdc", "--quick", "--columns", "l1",
                           "l2", "--methods", "fixmatch", "--out", str(out), "--config", grid, *extra],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)


def test_quick_grid_runs_skips_and_resumes(tmp_path):
    out, grid = tmp_path / "q", _grid_for_this_checkout(tmp_path / "grid.yaml")
    r = _quick(out, grid)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cmds = [l for l in r.stdout.splitlines() if "train_2d.py" in l]
    assert len(cmds) == 2 and {_flag(c, "max_iters") for c in cmds} == {"2"}  # the tiny budget, in every cell
    md = open(out / "acdc.md").read()
    (line,) = [l for l in md.splitlines() if l.startswith("| FixMatch (SAM-2) | SSL4MIS test, this repo |")]
    for value in line.strip("|").split("|")[2:4]:  # 1 case, 2 cases
        assert value.strip() != "—" and 0.0 <= float(value) <= 100.0, line
    assert "a budget of 2 iterations" in md and os.path.isfile(out / "acdc.csv")
    cells = {n: tables.Cell(f"acdc_fixmatch_l{n}", "fixmatch", f"l{n}", str(out / "runs" / f"acdc_fixmatch_l{n}"),
                               {}, ()) for n in (1, 2)}
    runs = {n: tables.run_state(cell)[0] for n, cell in cells.items()}
    assert all(runs.values())
    for rd in runs.values():
        s = json.load(open(tables.eval_summary_path(rd, "ssl4mis", "test")))
        assert (s["protocol"], s["weights"]) == ("ssl4mis", "ema")

    # The 2-case run "did not finish": it is resumed from its last.pt (and trained one step further), the
    # finished 1-case run is skipped (and flagged: its budget is not the table's), the resumed one re-evaluated.
    run2 = runs[2]
    os.remove(os.path.join(run2, "summary.json"))
    last = os.path.join(run2, "checkpoints", "last.pt")
    assert torch.load(last, weights_only=True)["iteration"] == 2
    r = _quick(out, grid, "--max_iters", "3")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"acdc_fixmatch_l1: finished ({runs[1]}), skipped" in r.stdout
    assert f"acdc_fixmatch_l2: resuming from {last}" in r.stdout
    assert f"resumed from {last} at iteration 2/3" in open(os.path.join(run2, "train.log")).read()
    assert torch.load(last, weights_only=True)["iteration"] == 3
    assert os.path.isfile(os.path.join(run2, "summary.json"))
    assert len(os.listdir(os.path.join(run2, "eval", "ssl4mis_test"))) == 2  # re-evaluated after resuming
    assert len(os.listdir(os.path.join(runs[1], "eval", "ssl4mis_test"))) == 1
    assert "acdc_fixmatch_l1: max_iters 2 (table: 3)" in open(out / "acdc.md").read()


@pytest.mark.parametrize("args, named", [("-infer coarse", "-infer"), ("-lr 1e-4 -infer=boxes", "-infer"),
                                         ("-max_iters 3", "-max_iters")])
def test_train_args_cannot_change_the_tables_inference_mode_or_budget(args, named, capsys):
    """One inference mode and budget per table: --train_args is refused in one line when it would set them for the
    cells (it came after the table's flags, so it silently won before); the validation cadence may change, for
    every cell alike."""
    with pytest.raises(SystemExit) as e:
        reproduce.main(["acdc_cpu", f"--train_args={args}", "--dry-run"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--train_args may not set {named}" in err and "-infer pcsw" in err
    assert reproduce.main(["acdc_cpu", "--train_args=-val_every 125", "--dry-run", "--methods", "sss",
                           "--seeds", "0"]) == 0
    assert "-val_every 250 -infer pcsw" in capsys.readouterr().out         # the table's, then the user's 125


def test_help_lists_every_table(capsys):
    with pytest.raises(SystemExit):
        reproduce.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in OmegaConf.load(reproduce.CONFIG)["tables"]:
        assert name in out


def test_dry_run_says_what_each_cell_trains_what_is_missing_and_the_compute(capsys, tmp_path):
    """The preset's hidden settings per cell (model, image size, checkpoint, batch), a warning for a missing data
    folder or checkpoint, and the total of iterations."""
    missing = tmp_path / "no_data"
    assert reproduce.main(["acdc", "--dry-run", "--out", str(tmp_path), "--methods", "supervised", "sss",
                           "--columns", "l3", "--data_path", str(missing)]) == 0
    out = capsys.readouterr().out.splitlines()
    cells = [ln.strip() for ln in out if ln.startswith("      SAM-2")]
    assert cells == [f"SAM-2 sam2_hiera_s at 1024 px from {os.path.join('checkpoints', 'sam2_hiera_small.pt')}, "
                     f"batch 4 labeled{extra}, 30000 iterations on auto, data {missing}"
                     for extra in ("", " + 4 unlabeled")]
    assert f"warning: data folder {missing} not found (--data_path DIR)" in out
    ckpt = os.path.join("checkpoints", "sam2_hiera_small.pt")
    assert (f"warning: SAM-2 checkpoint {ckpt} not found (bash checkpoints/download_ckpts.sh)" in out) == (
        not os.path.exists(os.path.join(ROOT, ckpt)))
    assert out[-1].startswith("compute: 2 runs, 60000 training iterations in all (30000 per run)")
    assert reproduce.main(["acdc_cpu", "--dry-run", "--out", str(tmp_path), "--methods", "sss", "--seeds", "0",
                           "--data_path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SAM-2 sam2_hiera_t at 128 px from random weights (-sam_ckpt none), batch 4 labeled + 4 unlabeled, " \
           "1500 iterations on cpu" in out and "warning" not in out
