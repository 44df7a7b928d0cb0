"""Reproduce the paper's tables: one command per table.

    python reproduce.py acdc [--labeled 1 3 7] [--methods ...] [--out DIR] [--data_path ./data/ACDC] [--sam_ckpt ...]
    python reproduce.py bhsd [--ratios 0.05 0.1 0.25 1.0] [--methods ...] [--out DIR] [--data_path ./data/bhsd]
    python reproduce.py acdc --dry-run               # list the runs and their exact commands, run nothing
    python reproduce.py acdc --quick --out /tmp/q     # tiny grid on generated demo data, CPU, minutes

Each cell of the grid (labeled setting x method) is one ``train_2d.py`` / ``train_3d.py`` run in its own
subprocess, logging into ``<out>/runs/<key>/`` (``key`` = ``<table>_<method>_<setting>``, so re-running the
command finds it). A run is finished when its run directory has ``summary.json``; finished runs are
skipped, unfinished ones with ``checkpoints/last.pt`` are resumed (``-resume``), others start afresh. Then
``evaluate.py`` scores every run's ``best.pt`` on the test split (ACDC: protocol ``ssl4mis``; with
``--protocols ... unimatch`` also the UniMatch protocol on val+test merged) into
``<run dir>/eval/<protocol>_<split>/``, and the tables are written to ``<out>/<table>.md`` and
``<out>/<table>.csv``: rows = methods, columns = labeled settings, published numbers beside ours, each
number with its protocol. A missing result is printed as "—", never guessed. See docs/reproduce.md.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.abspath(__file__))
TINY_CONFIG = os.path.join(ROOT, "sam2_train", "configs", "sam2_hiera_test.yaml")
MISSING = "—"

# Method key -> (row label, training flags).
METHODS = {
    "supervised": ("Supervised (SAM-2, labeled only)", ["-method", "supervised"]),
    "fixmatch": ("FixMatch (SAM-2)", ["-method", "fixmatch"]),
    "sss": ("SSS (ours)", ["-method", "sss"]),
    "sss_no_dfe": ("SSS w/o DFE", ["-method", "sss", "-dfe", "0"]),
    "sss_no_pcsw": ("SSS w/o PCSW", ["-method", "sss", "-pcsw", "0"]),
}

# Published numbers (Dice %), from DESIGN.md section 6. ACDC: {labeled cases: value}.
PUBLISHED_ACDC = [
    ("UniMatch", "UniMatch (val+test merged), published", {3: 88.9, 7: 89.9}),
    ("ABD", "SSL4MIS test, published", {3: 88.96, 7: 89.81}),
    ("BCP", "SSL4MIS test, published", {3: 87.59, 7: 88.84}),
    ("SAM-Match", "SSL4MIS test, published", {3: 89.36}),
    ("AD-MT", "SSL4MIS test, published", {3: 88.75, 7: 89.46}),
]
# BHSD: the paper's own split (all labeled training volumes + the unlabeled set); we read it as ratio 1.0.
PAPER_BHSD_RATIO = 1.0
PUBLISHED_BHSD = [
    ("SSS (paper)", "BHSD test, published", {PAPER_BHSD_RATIO: 53.15}),
    ("previous best (as cited by SSS)", "BHSD test, published", {PAPER_BHSD_RATIO: 49.50}),
]

ACDC_CLASSES = ["RV", "Myo", "LV"]
BHSD_CLASSES = ["EDH", "IPH", "IVH", "SAH", "SDH"]


@dataclass
class Run:
    table: str                 # "acdc" or "bhsd"
    method: str                # key of METHODS
    setting: float             # labeled cases (ACDC) or labeled ratio (BHSD)
    key: str                   # deterministic name: exp_name and folder under <out>/runs
    log_dir: str               # -log_dir of the run; the run directory is the one folder inside it
    train_cmd: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- grid
def setting_label(table: str, setting) -> str:
    if table == "acdc":
        n = int(setting)
        return f"{n} case" if n == 1 else f"{n} cases"
    return f"{setting * 100:g}% labeled"


def setting_tag(table: str, setting) -> str:
    return f"l{int(setting)}" if table == "acdc" else f"r{setting:g}"


def base_flags(opts) -> tuple[str, list]:
    """(script, flags shared by every run of the grid)."""
    if opts.table == "acdc":
        script = "train_2d.py"
        if opts.quick:
            flags = ["-dataset", "demo", "-data_path", opts.data_path, "-sam_config", opts.sam_config or TINY_CONFIG,
                     "-sam_ckpt", opts.sam_ckpt or "none", "-image_size", str(opts.image_size or 64), "-b", "2",
                     "-b_u", "4", "-slab_len", "2"]
        else:
            flags = ["-net", "sam2", "-dataset", "acdc", "-data_path", opts.data_path,
                     "-sam_config", opts.sam_config or "sam2_hiera_s",
                     "-sam_ckpt", opts.sam_ckpt or "./checkpoints/sam2_hiera_small.pt",
                     "-image_size", str(opts.image_size or 1024), "-out_size", str(opts.image_size or 1024),
                     "-b", "4", "-val_freq", "1"]
    else:
        script = "train_3d.py"
        if opts.quick:
            flags = ["-dataset", "demo", "-data_path", opts.data_path, "-sam_config", opts.sam_config or TINY_CONFIG,
                     "-sam_ckpt", opts.sam_ckpt or "none", "-image_size", str(opts.image_size or 64),
                     "-video_length", "4"]
        else:
            flags = ["-net", "sam2", "-dataset", "bhsd", "-data_path", opts.data_path,
                     "-sam_config", opts.sam_config or "sam2_hiera_s",
                     "-sam_ckpt", opts.sam_ckpt or "./checkpoints/sam2_hiera_small.pt",
                     "-image_size", str(opts.image_size or 1024), "-val_freq", "1", "-prompt", "bbox",
                     "-prompt_freq", "2"]
    if opts.quick:
        flags += ["-num_workers", "0", "-max_iters", str(opts.quick_iters), "-log_freq", "1", "-val_volumes", "1",
                  "-save_freq", "1", "-val_freq", "1000", "-device", opts.device or "cpu"]
    elif opts.device:
        flags += ["-device", opts.device]
    return script, flags + shlex.split(opts.train_args or "")


def build_grid(opts) -> list[Run]:
    script, flags = base_flags(opts)
    launcher = shlex.split(opts.launcher) if opts.launcher else [sys.executable]
    settings = opts.labeled if opts.table == "acdc" else opts.ratios
    runs = []
    for setting in settings:
        for method in opts.methods:
            key = f"{opts.table}_{method}_{setting_tag(opts.table, setting)}"
            log_dir = os.path.join(opts.out, "runs", key)
            what = ["-labeled_num", str(int(setting))] if opts.table == "acdc" else ["-labeled_ratio", f"{setting:g}"]
            cmd = [*launcher, os.path.join(ROOT, script), *flags, *METHODS[method][1], *what,
                   "-exp_name", key, "-log_dir", log_dir]
            runs.append(Run(opts.table, method, setting, key, log_dir, cmd))
    return runs


# ---------------------------------------------------------------------------------------------- state
def run_dirs(run: Run) -> list[str]:
    """Run directories a run of this key has created (``<log_dir>/<key>_<timestamp>[_n]/``)."""
    if not os.path.isdir(run.log_dir):
        return []
    return sorted(d for d in glob.glob(os.path.join(run.log_dir, run.key + "_*"))
                  if os.path.isfile(os.path.join(d, "config.json")))


def finished_dir(run: Run) -> str | None:
    done = [d for d in run_dirs(run) if os.path.isfile(os.path.join(d, "summary.json"))]
    return max(done, key=os.path.getmtime) if done else None


def resumable_checkpoint(run: Run) -> str | None:
    ckpts = [os.path.join(d, "checkpoints", "last.pt") for d in run_dirs(run)]
    ckpts = [c for c in ckpts if os.path.isfile(c)]
    return max(ckpts, key=os.path.getmtime) if ckpts else None


def status(run: Run) -> str:
    if finished_dir(run):
        return "finished"
    return "resume" if resumable_checkpoint(run) else "new"


def command_for(run: Run) -> list[str]:
    """The command that brings ``run`` forward: the training command, with ``-resume`` when it has a last.pt.
    ``-resume_force 1``: the grid's own options (e.g. ``--quick_iters``) may have changed since; the trainer
    records any changed flag under ``resumed`` in the run's config.json."""
    ckpt = resumable_checkpoint(run)
    return run.train_cmd + (["-resume", ckpt, "-resume_force", "1"] if ckpt else [])


def eval_dir(run_dir: str, protocol: str, split: str) -> str:
    return os.path.join(run_dir, "eval", f"{protocol}_{split}")


def eval_summary_path(run_dir: str, protocol: str, split: str) -> str | None:
    """The newest evaluation of this (protocol, split) written after the run finished; an older one scored
    checkpoints a resumed run has since replaced, and does not count."""
    found = glob.glob(os.path.join(eval_dir(run_dir, protocol, split), "*", "summary.json"))
    finished = os.path.join(run_dir, "summary.json")
    since = os.path.getmtime(finished) if os.path.isfile(finished) else 0.0
    found = [f for f in found if os.path.getmtime(f) >= since]
    return max(found, key=os.path.getmtime) if found else None


def eval_jobs(table: str, protocols) -> list[tuple[str, str]]:
    """(protocol, split) pairs to evaluate. BHSD has one (volume) protocol; UniMatch needs val and test."""
    if table == "bhsd":
        return [("volume", "test")]
    jobs = []
    for p in protocols:
        jobs += [("ssl4mis", "test")] if p == "ssl4mis" else [("unimatch", "val"), ("unimatch", "test")]
    return jobs


def evaluate_cmd(run_dir: str, protocol: str, split: str, opts) -> list[str]:
    ckpt = os.path.join(run_dir, "checkpoints", "best.pt")
    last = os.path.join(run_dir, "checkpoints", "last.pt")
    if not os.path.isfile(ckpt) and os.path.isfile(last):  # no finite validation score was ever reached
        ckpt = last
    cmd = [sys.executable, os.path.join(ROOT, "evaluate.py"), "-ckpt", ckpt, "-split", split,
           "-data_path", opts.data_path, "-log_dir", eval_dir(run_dir, protocol, split)]
    if protocol in ("ssl4mis", "unimatch"):
        cmd += ["-protocol", protocol]
    if opts.device or opts.quick:
        cmd += ["-device", opts.device or "cpu"]
    if opts.quick:  # a few test volumes are enough to exercise the path
        cmd += ["-max_volumes", "2"]
    return cmd


# ---------------------------------------------------------------------------------------------- execution
def _print_cmd(cmd) -> None:
    print("  $ " + " ".join(shlex.quote(c) for c in cmd), flush=True)


def execute(cmd, log_path: str) -> int:
    """Run ``cmd`` in its own process, output appended to ``log_path`` (and echoed line by line)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace")
        for line in proc.stdout:
            log.write(line)
            if "\r" not in line:  # progress bars go to the log only
                sys.stdout.write("    " + line)
        return proc.wait()


def evaluate_in_process(cmd: list[str]) -> int:
    """Run an ``evaluate.py`` command line in this process (``evaluate.main``: the same code, without paying
    the interpreter and library start-up once per checkpoint). Returns its exit status."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import evaluate
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        return int(evaluate.main(cmd[2:]) or 0)
    except SystemExit as e:  # argparse errors
        return int(e.code or 0) if isinstance(e.code, int) else 2
    except Exception as e:  # one bad checkpoint must not stop the grid
        print(f"    evaluate.py failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        os.chdir(cwd)


def run_grid(runs: list[Run], opts) -> list[str]:
    """Train (or resume) every unfinished run, then evaluate; returns the failures."""
    failures = []
    for i, run in enumerate(runs, 1):
        st = status(run)
        head = f"[{i}/{len(runs)}] {run.key}"
        if st == "finished":
            print(f"{head}: finished ({finished_dir(run)}), skipped", flush=True)
        else:
            cmd = command_for(run)
            print(f"{head}: {'resuming from ' + resumable_checkpoint(run) if st == 'resume' else 'training'}",
                  flush=True)
            _print_cmd(cmd)
            t0 = time.time()
            rc = execute(cmd, os.path.join(run.log_dir, "reproduce.log"))
            print(f"{head}: exit status {rc} after {time.time() - t0:.0f} s", flush=True)
            if rc != 0 or not finished_dir(run):
                failures.append(f"{run.key}: training exit status {rc} (log: {run.log_dir}/reproduce.log)")
                continue
        rd = finished_dir(run)
        for protocol, split in eval_jobs(run.table, opts.protocols):
            if eval_summary_path(rd, protocol, split):
                continue
            cmd = evaluate_cmd(rd, protocol, split, opts)
            print(f"{head}: evaluating ({protocol}, {split})", flush=True)
            _print_cmd(cmd)
            rc = evaluate_in_process(cmd)
            if rc != 0 or not eval_summary_path(rd, protocol, split):
                failures.append(f"{run.key}: evaluate.py ({protocol}, {split}) exit status {rc}")
    return failures


# ---------------------------------------------------------------------------------------------- results
def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _finite(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def merged_dice(val_cases: str, test_cases: str, class_names) -> dict | None:
    """Dice over val+test merged (the UniMatch protocol) from evaluate.py's two ``cases.csv`` files: per
    class the mean over volumes (a class absent from both prediction and label of a volume, NaN in the
    file, is left out), then the mean over classes (the convention of ``sam2_train.metrics.summarize``)."""
    rows = []
    for path in (val_cases, test_cases):
        with open(path, newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    out = {}
    for c in class_names:
        vals = [v for v in (_finite(r["dice"]) for r in rows if r["class"] == c) if v is not None]
        out[c] = sum(vals) / len(vals) if vals else None
    present = [v for v in out.values() if v is not None]
    out["mean"] = sum(present) / len(present) if present else None
    return out


def collect(runs: list[Run], opts) -> dict:
    """{(method, setting, protocol): {"dice": {class: v}, "hd95": ..., "asd": ..., "checkpoint": ...}}."""
    results = {}
    classes = ACDC_CLASSES if opts.table == "acdc" else BHSD_CLASSES
    for run in runs:
        rd = finished_dir(run)
        if not rd:
            continue
        for protocol, split in eval_jobs(run.table, opts.protocols):
            if split != "test":
                continue
            path = eval_summary_path(rd, protocol, split)
            if not path:
                continue
            s = _load(path)
            names = [c for c in s["dice"] if c != "mean"] or classes
            entry = {m: {c: _finite(s.get(m, {}).get(c)) for c in (*names, "mean")} for m in ("dice", "hd95", "asd")}
            entry.update(checkpoint=s.get("checkpoint"), units=s.get("distance_units"), classes=names,
                         protocol=s.get("protocol", protocol), num_volumes=s.get("num_volumes"))
            if protocol == "unimatch":
                val = eval_summary_path(rd, "unimatch", "val")
                if val:
                    merged = merged_dice(os.path.join(os.path.dirname(val), "cases.csv"),
                                         os.path.join(os.path.dirname(path), "cases.csv"), names)
                    entry = {"dice": merged, "classes": names, "protocol": "unimatch (val+test merged)",
                             "checkpoint": s.get("checkpoint")}
                else:
                    continue
            results[(run.method, run.setting, protocol)] = entry
    return results


def fmt(v, scale=1.0, digits=2) -> str:
    v = _finite(v)
    return MISSING if v is None else f"{v * scale:.{digits}f}"


PROTOCOL_LABEL = {"ssl4mis": "SSL4MIS test, this repo", "unimatch": "UniMatch (val+test merged), this repo",
                  "volume": "BHSD test, this repo"}


def table_rows(runs: list[Run], results: dict, opts):
    """(header, rows) of the main table (mean Dice %) and [(setting, header, rows)] of the per-class tables."""
    settings = list(dict.fromkeys(r.setting for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    classes = ACDC_CLASSES if opts.table == "acdc" else BHSD_CLASSES
    protocols = [p for p, s in eval_jobs(opts.table, opts.protocols) if s == "test"]
    header = ["Method", "Protocol", *[f"{setting_label(opts.table, s)}: Dice %" for s in settings]]
    rows = []
    published = PUBLISHED_ACDC if opts.table == "acdc" else PUBLISHED_BHSD
    for name, proto, values in published:
        rows.append([name, proto, *[(f"{values[s]:.2f}" if s in values else MISSING) for s in settings]])
    for protocol in protocols:
        for m in methods:
            cells = []
            for s in settings:
                e = results.get((m, s, protocol))
                cells.append(fmt(e["dice"]["mean"], 100) if e else MISSING)
            rows.append([METHODS[m][0], PROTOCOL_LABEL[protocol], *cells])

    # Detailed tables (ours, the first protocol), one per setting: Dice per class + mean; ACDC also HD95 and
    # ASD per class + mean (the SSL4MIS/ABD layout), BHSD HD95/ASD means.
    proto = protocols[0]
    detail = []
    for s in settings:
        d_header = ["Method", "Labeled", "Protocol", *[f"Dice % {c}" for c in classes], "Dice % mean"]
        parts = [(m_, c) for m_ in ("hd95", "asd") for c in ((*classes, "mean") if opts.table == "acdc" else ("mean",))]
        d_header += [f"{'HD95' if m_ == 'hd95' else 'ASD'} {c}" for m_, c in parts]
        d_rows = []
        for m in methods:
            e = results.get((m, s, proto))
            row = [METHODS[m][0], setting_label(opts.table, s), PROTOCOL_LABEL[proto]]
            row += [fmt(e["dice"].get(c), 100) if e else MISSING for c in (*classes, "mean")]
            row += [fmt(e[m_].get(c)) if e else MISSING for m_, c in parts]
            d_rows.append(row)
        detail.append((s, d_header, d_rows))
    return header, rows, detail


def markdown(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_tables(runs: list[Run], opts) -> tuple[str, str]:
    results = collect(runs, opts)
    header, rows, detail = table_rows(runs, results, opts)
    title = {"acdc": "ACDC (labeled cases)", "bhsd": "BHSD (labeled fraction of the training volumes)"}[opts.table]
    units = "voxels" if opts.table == "acdc" else "mm"
    md = [f"# {title}{' — QUICK demo grid (random weights, meaningless numbers)' if opts.quick else ''}", "",
          f"Written by `python reproduce.py {' '.join(shlex.quote(a) for a in opts.argv)}`. Dice in %; "
          f"'{MISSING}' = no result (not run, not finished, or not published). Every row names its protocol: "
          "'published' numbers are copied from the papers (DESIGN.md section 6), 'this repo' numbers come from "
          "evaluate.py on each run's best.pt.", "", markdown(header, rows), "",
          f"## Per class (this repo; HD95/ASD in {units})", ""]
    for _, d_header, d_rows in detail:
        md += [markdown(d_header, d_rows), ""]
    if opts.table == "bhsd":
        md += [f"Published BHSD numbers sit in the {setting_label('bhsd', PAPER_BHSD_RATIO)} column: the SSS "
               "paper trains on all labeled training volumes plus the unlabeled set (the labeled fraction behind "
               "the previous best, 49.50, is not stated in our sources).", ""]
    md_path = os.path.join(opts.out, f"{opts.table}.md")
    csv_path = os.path.join(opts.out, f"{opts.table}.csv")
    os.makedirs(opts.out, exist_ok=True)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
        for _, d_header, d_rows in detail:
            w.writerow([])
            w.writerow(d_header)
            w.writerows(d_rows)
    return md_path, csv_path


# ---------------------------------------------------------------------------------------------- CLI
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[0])
    p.add_argument("table", choices=("acdc", "bhsd"))
    p.add_argument("--labeled", type=int, nargs="+", default=None,
                   help="ACDC labeled cases (default 1 3 7; --quick: 1 2)")
    p.add_argument("--ratios", type=float, nargs="+", default=None,
                   help="BHSD labeled fractions (default 0.05 0.1 0.25 1.0; --quick: 0.25 0.5)")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=None,
                   help="default: all five (--quick: supervised sss)")
    p.add_argument("--out", default=None, help="output folder (default results/<table>, --quick: results/quick_<table>)")
    p.add_argument("--data_path", default=None, help="default ./data/ACDC or ./data/bhsd (--quick: <out>/data/demo_*)")
    p.add_argument("--sam_ckpt", default=None, help="SAM-2 checkpoint (default ./checkpoints/sam2_hiera_small.pt)")
    p.add_argument("--sam_config", default=None, help="default sam2_hiera_s (--quick: the tiny test config)")
    p.add_argument("--image_size", type=int, default=None, help="default 1024 (--quick: 64)")
    p.add_argument("--device", default=None, choices=("auto", "cuda", "cpu"), help="passed to every command")
    p.add_argument("--protocols", nargs="+", choices=("ssl4mis", "unimatch"), default=None,
                   help="ACDC evaluation protocols (default ssl4mis unimatch; --quick: ssl4mis)")
    p.add_argument("--launcher", default=None,
                   help="prefix of each training command instead of the Python interpreter, e.g. "
                        "'torchrun --standalone --nproc_per_node 4'")
    p.add_argument("--train_args", default=None, help="extra training flags appended to every run, e.g. '-epochs 50'")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="list the runs and commands, run nothing")
    p.add_argument("--quick", action="store_true", help="tiny grid on generated demo data (CPU, a few minutes)")
    p.add_argument("--quick_iters", type=int, default=2, help="training iterations per --quick run")
    p.add_argument("--tables_only", action="store_true", help="only (re)write the tables from what exists")
    opts = p.parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    q = opts.quick
    if opts.labeled is None:
        opts.labeled = [1, 2] if q else [1, 3, 7]
    if opts.ratios is None:
        opts.ratios = [0.25, 0.5] if q else [0.05, 0.1, 0.25, 1.0]
    if any(n < 1 for n in opts.labeled):
        p.error("--labeled: cases must be >= 1")
    if any(not 0 < r <= 1 for r in opts.ratios):
        p.error("--ratios: fractions must be in (0, 1]")
    if opts.methods is None:
        opts.methods = ["supervised", "sss"] if q else list(METHODS)
    opts.methods = list(dict.fromkeys(opts.methods))
    if opts.protocols is None:
        opts.protocols = ["ssl4mis"] if q else ["ssl4mis", "unimatch"]
    opts.protocols = ["ssl4mis"] + [x for x in dict.fromkeys(opts.protocols) if x != "ssl4mis"]
    if opts.out is None:
        opts.out = os.path.join("results", f"quick_{opts.table}" if q else opts.table)
    opts.out = os.path.abspath(opts.out)
    if opts.data_path is None:
        opts.data_path = (os.path.join(opts.out, "data", f"demo_{opts.table}") if q
                          else os.path.join(".", "data", "ACDC" if opts.table == "acdc" else "bhsd"))
    opts.data_path = os.path.abspath(opts.data_path)
    return opts


def main(argv=None) -> int:
    opts = parse(argv)
    runs = build_grid(opts)
    if opts.dry_run:
        print(f"{len(runs)} runs for table {opts.table} (output {opts.out}):")
        for run in runs:
            print(f"{run.key} [{status(run)}]")
            _print_cmd(command_for(run))
            for protocol, split in eval_jobs(run.table, opts.protocols):
                _print_cmd(evaluate_cmd(os.path.join(run.log_dir, f"{run.key}_<timestamp>"), protocol, split, opts))
        return 0
    t0 = time.time()
    failures = []
    if not opts.tables_only:
        if opts.quick:
            from dataset.demo import ensure_demo
            ensure_demo(opts.data_path, opts.table, seed=0)
        failures = run_grid(runs, opts)
    md_path, csv_path = write_tables(runs, opts)
    with open(md_path, encoding="utf-8") as f:
        print(f.read())
    print(f"wrote {md_path} and {csv_path} ({time.time() - t0:.0f} s)")
    for msg in failures:
        print(f"FAILED {msg}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
