"""Reproduce the paper's tables, one command per table; the grid is data (configs/paper.yaml).

    python reproduce.py acdc [--columns l3 l7] [--methods sss ...] [--max_iters N] [--out DIR] [--data_path DIR]
    python reproduce.py bhsd --dry-run                # every cell's exact commands, run nothing
    python reproduce.py acdc --quick --out /tmp/q      # tiny grid on generated demo data, CPU, minutes

Each cell (column x row x seed) is one ``train_2d.py``/``train_3d.py`` subprocess in ``<out>/runs/<key>/``
with ``-dataset``, the cell's own flags and the table's protocol (``-max_iters -val_every -infer``, the same
in every cell); the script fills the dataset's defaults. Finished runs are skipped, unfinished ones resumed.
``evaluate.py`` (a subprocess) scores each run; ``<out>/<table>.md|.csv`` put ours beside
configs/published.csv, "—" where there is no number. See docs/reproduce.md.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

from omegaconf import OmegaConf

from sam2_train.evaluation.tables import Cell, eval_summary_path, run_state, write_tables

ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(ROOT, "configs", "paper.yaml")
PUBLISHED = os.path.join(ROOT, "configs", "published.csv")


# ---------------------------------------------------------------------------------------------- grid
def load_table(name: str, quick: bool, config: str = CONFIG) -> dict:
    """Table ``name`` of ``config`` as plain data (with ``quick``, each key of its ``quick`` block replaces
    the table's), plus every row and protocol definition (``row_defs``, ``protocol_defs``)."""
    conf = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    if name not in conf["tables"]:
        raise SystemExit(f"reproduce.py: {config} has no table {name!r} (tables: {', '.join(conf['tables'])})")
    t = dict(conf["tables"][name], name=name, row_defs=conf["rows"], protocol_defs=conf["protocols"])
    t.update(t.pop("quick", {}) if quick else {})
    for r, row in conf["rows"].items():
        if set(row) - {"label", "flags", "seeds"}:
            raise SystemExit(f"reproduce.py: {config}: row {r} may set label, flags and seeds only (budget, "
                             "validation cadence and inference mode are the table's)")
    return t


def flag_list(flags: dict) -> list[str]:
    """{name: value} -> ["-name", "value", ...], the scripts' single-dash dialect."""
    return [s for k, v in flags.items() for s in (f"-{k}", f"{v:g}" if isinstance(v, float) else str(v))]


def build_grid(t: dict, opts) -> list[Cell]:
    launcher = shlex.split(opts.launcher) if opts.launcher else [sys.executable]
    device = {"device": opts.device} if opts.device else {}
    cells = []
    for c in opts.columns:
        for r in opts.methods:
            row = t["row_defs"][r]
            for seed in opts.seeds or row.get("seeds", t["seeds"]):
                key = f"{t['name']}_{r}_{c}" + (f"_s{seed}" if seed else "")
                budget = dict(t["budget"])
                flags = {"dataset": t["dataset"], **({"data_path": opts.data_path} if opts.data_path else {}),
                         **t["flags"], **row["flags"], **t["columns"][c]["flags"], **budget,
                         **({"seed": seed} if seed else {}), **device}
                log_dir = os.path.join(opts.out, "runs", key)
                cmd = [*launcher, os.path.join(ROOT, t["script"]), *flag_list(flags),
                       *shlex.split(opts.train_args or ""), "-exp_name", key, "-log_dir", log_dir]
                cells.append(Cell(key, r, c, log_dir, budget, tuple(cmd)))
    return cells


def eval_cmd(t: dict, cell: Cell, run_dir: str, protocol: str, split: str, opts) -> list[str]:
    ckpt = os.path.join(run_dir, "checkpoints", f"{t.get('checkpoint', 'best')}.pt")
    if not os.path.isfile(ckpt) and os.path.isfile(os.path.join(run_dir, "checkpoints", "last.pt")):
        ckpt = os.path.join(run_dir, "checkpoints", "last.pt")  # no finite validation score was ever reached
    flags = {"ckpt": ckpt, "split": split, **t["protocol_defs"][protocol]["flags"], "weights": t["weights"],
             **{k: v for k, v in t["budget"].items() if k == "infer"}, **t.get("eval_flags", {}),
             **({"device": opts.device} if opts.device else {}),
             "log_dir": os.path.join(run_dir, "eval", f"{protocol}_{split}")}
    return [sys.executable, os.path.join(ROOT, "evaluate.py"), *flag_list(flags)]


# ---------------------------------------------------------------------------------------------- execution
def show(cmd) -> str:
    return "  $ " + " ".join(shlex.quote(c) for c in cmd)


def execute(cmd, log_path: str) -> int:
    """Run ``cmd`` in ROOT, its output appended to ``log_path`` and echoed (progress bars to the log only)."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        print(show(cmd), file=log, flush=True)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, errors="replace")
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write("" if "\r" in line else "    " + line)
        return proc.wait()


def cell_config(t: dict, cell: Cell):
    """The training script's own reading of a cell's command (its TrainConfig, the dataset preset applied)."""
    import cfg
    cmd = list(cell.train_cmd)
    script = os.path.join(ROOT, t["script"])
    return cfg.parse_config(cmd[cmd.index(script) + 1:], t["script"][len("train_"):-len(".py")])


def method_of(config):
    from sam2_train.methods.registry import method_class
    return method_class(config.semi.method, config.model.student, config.run.script)


def uses_sam2(config) -> bool:
    """The run builds a SAM-2 (the student itself, or a SAM-guided method's guide)."""
    return config.model.student == "sam2" or method_of(config).needs_guide


def describe(config) -> str:
    """What a cell trains, in one line: the settings its preset hides."""
    m, r = config.model, config.run
    weights = "random weights (-sam_ckpt none)" if m.sam_ckpt.lower() == "none" else m.sam_ckpt
    if m.student == "sam2":
        net = f"SAM-2 {m.sam_config} at {m.image_size} px from {weights}"
    else:
        guide = f" (SAM-2 guide {m.sam_config} at {m.guide_size} px from {weights})" if uses_sam2(config) else ""
        net = f"{m.student} at {m.image_size} px{guide}"
    unlabeled = f" + {r.batch_size_u} unlabeled" if method_of(config).needs_unlabeled else ""
    return (f"      {net}, batch {r.batch_size} labeled{unlabeled}, {r.max_iters} iterations on {r.device}, "
            f"data {config.data.data_path}")


def dry_run_report(t: dict, cells: list[Cell], configs: list) -> None:
    """After the commands of --dry-run: what is missing (data folder, SAM-2 checkpoint) and the compute."""
    for what, paths in (("data folder", {c.data.data_path for c in configs if c.data.dataset != "demo"}),
                        ("SAM-2 checkpoint", {c.model.sam_ckpt for c in configs
                                              if c.model.sam_ckpt.lower() != "none" and uses_sam2(c)})):
        for path in sorted(p for p in paths if not os.path.exists(os.path.join(ROOT, p))):   # the runs' cwd
            hint = " (bash checkpoints/download_ckpts.sh)" if what.startswith("SAM") else " (--data_path DIR)"
            print(f"warning: {what} {path} not found{hint}", flush=True)
    total = sum(c.run.max_iters for c in configs)
    print(f"compute: {len(cells)} runs, {total} training iterations in all "
          f"({', '.join(sorted({str(c.run.max_iters) for c in configs}))} per run), plus one evaluation per run "
          "and protocol split", flush=True)


def run_grid(t: dict, cells: list[Cell], opts) -> list[str]:
    """Train (or resume) every unfinished cell, then evaluate it; with --dry-run only print the commands, what
    each cell trains, what is missing and the compute. Returns the failures."""
    failures, configs = [], []
    for i, cell in enumerate(cells, 1):
        head, log = f"[{i}/{len(cells)}] {cell.key}", os.path.join(cell.log_dir, "reproduce.log")
        rd, last = run_state(cell)
        if opts.dry_run:
            configs.append(cell_config(t, cell))
        if rd:
            print(f"{head}: finished ({rd}), skipped", flush=True)
        else:
            # -resume_force 1: this grid's budget may have changed since (recorded under "resumed" in config.json)
            cmd = list(cell.train_cmd) + (["-resume", last, "-resume_force", "1"] if last else [])
            print(f"{head}: {'resuming from ' + last if last else 'training'}\n{show(cmd)}", flush=True)
            if opts.dry_run:
                print(describe(configs[-1]), flush=True)
            rd = os.path.join(cell.log_dir, f"{cell.key}_<timestamp>")
            if not opts.dry_run:
                t0, rc = time.time(), execute(cmd, log)
                print(f"{head}: exit status {rc} after {time.time() - t0:.0f} s", flush=True)
                if rc != 0 or not (rd := run_state(cell)[0]):
                    failures.append(f"{cell.key}: training exit status {rc} (log: {log})")
                    continue
        for protocol, split in [(p, s) for p in t["protocols"] for s in t["protocol_defs"][p]["splits"]]:
            if opts.dry_run or not eval_summary_path(rd, protocol, split):
                cmd = eval_cmd(t, cell, rd, protocol, split, opts)
                print(f"{head}: evaluating ({protocol}, {split})\n{show(cmd)}", flush=True)
                if not opts.dry_run and (execute(cmd, log) != 0 or not eval_summary_path(rd, protocol, split)):
                    failures.append(f"{cell.key}: evaluate.py ({protocol}, {split}) failed (log: {log})")
    if opts.dry_run:
        dry_run_report(t, cells, configs)
    return failures


# ---------------------------------------------------------------------------------------------- CLI
#: training flags --train_args may not set: the table's inference mode (evaluate.py scores every cell in it, so a
#: run validated in another mode would be selected and reported in two) and its budget (--max_iters sets it, and
#: the tables state it). The validation cadence may change: it changes for every cell alike.
OWNED_BY_THE_TABLE = ("-infer", "-max_iters")


def protocol_flags_in(train_args: str | None, budget: dict) -> list[str]:
    """The flags of ``train_args`` that would change what the table fixes for its cells (-infer, -max_iters)."""
    owned = {f"-{k}" for k in budget} & set(OWNED_BY_THE_TABLE)
    given = [tok.split("=", 1)[0] for tok in shlex.split(train_args or "") if tok.startswith("-")]
    return list(dict.fromkeys(flag for flag in given if flag in owned))


def table_names(config: str = CONFIG) -> list[str]:
    return list(OmegaConf.load(config)["tables"])


def parse(argv=None) -> tuple[argparse.Namespace, dict]:
    p = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.split("\n\n")[0])
    p.add_argument("table", help=f"a table of --config: {', '.join(table_names())}")
    p.add_argument("--columns", nargs="+", help="column keys, e.g. l3 l7 (default: the table's)")
    p.add_argument("--methods", nargs="+", help="row keys of --config (default: the table's rows)")
    p.add_argument("--max_iters", type=int, help="iteration budget of every cell (default: the table's)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds of every row (default: the row's, else the table's)")
    p.add_argument("--out", help="output folder (default results/<table>; --quick: results/quick_<table>)")
    p.add_argument("--data_path", help="-data_path of every run (default: the script's; --quick: <out>/data/demo_*)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), help="-device of every command")
    p.add_argument("--launcher", help="prefix of the training commands, e.g. 'torchrun --nproc_per_node 4'")
    p.add_argument("--train_args", help="extra training flags appended to every run, e.g. '-sam_ckpt PATH'")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print every cell's commands, run nothing")
    p.add_argument("--quick", action="store_true", help="tiny grid on generated demo data (CPU, minutes)")
    p.add_argument("--tables_only", action="store_true", help="only (re)write the tables from what exists")
    p.add_argument("--config", default=CONFIG, help="the grid (default configs/paper.yaml)")
    opts = p.parse_args(argv)
    opts.argv = list(sys.argv[1:] if argv is None else argv)
    t = load_table(opts.table, opts.quick, opts.config)
    for name, default, known in (("columns", list(t["columns"]), t["columns"]), ("methods", t["rows"], t["row_defs"])):
        setattr(opts, name, list(dict.fromkeys(getattr(opts, name) or default)))
        if unknown := [x for x in getattr(opts, name) if x not in known]:
            p.error(f"--{name}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    if opts.max_iters is not None and opts.max_iters < 1:
        p.error("--max_iters must be >= 1")
    if owned := protocol_flags_in(opts.train_args, t["budget"]):
        p.error(f"--train_args may not set {', '.join(owned)}: every cell of table {opts.table} shares the table's "
                f"{' '.join(flag_list(t['budget']))} (--max_iters changes the budget of "
                "all cells; another inference mode is another table)")
    t["budget"]["max_iters"] = opts.max_iters or t["budget"]["max_iters"]
    opts.out = os.path.abspath(opts.out or os.path.join("results", ("quick_" if opts.quick else "") + opts.table))
    if opts.quick and not opts.data_path:
        opts.data_path = os.path.join(opts.out, "data", f"demo_{t['demo']}")
    opts.data_path = opts.data_path and os.path.abspath(opts.data_path)
    return opts, t


def main(argv=None) -> int:
    opts, t = parse(argv)
    cells = build_grid(t, opts)
    b = t["budget"]
    guide = {k: v for k, v in t["flags"].items() if k == "guide_size"}
    print(f"{len(cells)} runs for table {t['name']} (output {opts.out}); every cell: "
          f"{' '.join(flag_list({k: v for k, v in b.items() if k != 'infer'}))}, evaluated with -weights {t['weights']}"
          + (f"; -infer {b['infer']} for every row" if "infer" in b else "")
          + (f"; SAM-2 guide at {' '.join(flag_list(guide))}" if guide else ""), flush=True)
    t0, failures = time.time(), []
    if opts.quick and not (opts.dry_run or opts.tables_only):
        from dataset.demo import ensure_demo
        ensure_demo(opts.data_path, t["demo"], seed=0)
    if not opts.tables_only:
        failures = run_grid(t, cells, opts)
    if opts.dry_run:
        return 0
    md_path = write_tables(t, cells, opts.out, opts.columns, PUBLISHED, " ".join(map(shlex.quote, opts.argv)))
    with open(md_path, encoding="utf-8") as f:
        print(f.read() + f"wrote {md_path} and {md_path[:-3]}.csv ({time.time() - t0:.0f} s)")
    for msg in failures:
        print(f"FAILED {msg}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
