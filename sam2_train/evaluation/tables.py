"""Results tables of ``reproduce.py``: where each grid cell's runs and evaluations are, and the Markdown / CSV
tables (ours beside the published numbers) built from them.

A table ``t`` is one entry of ``configs/paper.yaml`` as plain data (``reproduce.load_table``): ``rows``,
``columns``, ``classes``, ``protocols``, ``budget``, ``weights`` and the ``row_defs``/``protocol_defs`` it refers
to. Each cell keeps its runs under ``<log_dir>/<key>_<timestamp>/`` (``config.json``, ``summary.json`` when
finished, ``eval/<protocol>_<split>/*/summary.json`` + ``cases.csv`` from ``evaluate.py``).
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import statistics
from dataclasses import dataclass

MISSING = "—"
WEIGHTS = {"ema": "the EMA of the weights", "student": "the student's weights"}


@dataclass(frozen=True)
class Cell:
    key: str        # <table>_<row>_<column>[_s<seed>]: -exp_name, and the run's -log_dir under <out>/runs
    row: str
    column: str
    log_dir: str
    budget: dict    # this cell's -max_iters / -val_every / -infer
    train_cmd: tuple


# ---------------------------------------------------------------------------------------------- state
def run_state(cell: Cell) -> tuple[str | None, str | None]:
    """(newest finished run directory, newest ``last.pt`` to resume from) of the cell's runs
    (``<log_dir>/<key>_<timestamp>[_n]/``)."""
    dirs = [d for d in glob.glob(os.path.join(cell.log_dir, cell.key + "_*"))
            if os.path.isfile(os.path.join(d, "config.json")) and not os.path.islink(d)]   # not <key>_latest
    newest = lambda paths: max(paths, key=os.path.getmtime) if paths else None  # noqa: E731
    return (newest([d for d in dirs if os.path.isfile(os.path.join(d, "summary.json"))]),
            newest([p for d in dirs if os.path.isfile(p := os.path.join(d, "checkpoints", "last.pt"))]))


def eval_summary_path(run_dir: str, protocol: str, split: str) -> str | None:
    """The newest evaluation of (protocol, split) written after the run's summary.json (an older one scored
    checkpoints that a resumed run has since replaced)."""
    finished = os.path.join(run_dir, "summary.json")
    since = os.path.getmtime(finished) if os.path.isfile(finished) else 0.0
    found = [f for f in glob.glob(os.path.join(run_dir, "eval", f"{protocol}_{split}", "*", "summary.json"))
             if os.path.getmtime(f) >= since]
    return max(found, key=os.path.getmtime) if found else None


# ---------------------------------------------------------------------------------------------- results
def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _flat(d: dict) -> dict:
    """Nested sections merged into one level: {"optim": {"max_iters": 3}} -> {"max_iters": 3}."""
    return {k: w for key, v in d.items() for k, w in (_flat(v) if isinstance(v, dict) else {key: v}).items()}


def _finite(values) -> list[float]:
    """The finite numbers among ``values`` (None, NaN and text left out)."""
    out = []
    for v in values:
        try:
            out += [float(v)] if math.isfinite(float(v)) else []
        except (TypeError, ValueError):
            pass
    return out


def fmt(values, scale=1.0) -> str:
    """Mean of the finite ``values`` x scale (2 decimals), '± std' when there are several (seeds); else '—'."""
    vals = [v * scale for v in _finite(values)]
    std = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
    return f"{statistics.mean(vals):.2f}{std}" if vals else MISSING


def merged_dice(cases_files: list[str], classes) -> dict:
    """Dice over several splits merged per volume (the UniMatch protocol) from evaluate.py's ``cases.csv``:
    per class the mean over volumes (NaN = class absent from prediction and label: left out), then over classes."""
    rows = []
    for path in cases_files:
        with open(path, newline="", encoding="utf-8") as f:
            rows += list(csv.DictReader(f))
    mean = lambda vs: statistics.mean(vs) if (vs := _finite(vs)) else None  # noqa: E731
    out = {c: mean(r["dice"] for r in rows if r["class"] == c) for c in classes}
    return dict(out, mean=mean(out.values()))


def score(t: dict, run_dir: str, protocol: str) -> dict | None:
    """{"dice"|"hd95"|"asd": {class|"mean": value}, "evals": [evaluate.py summaries]} of a run, or None."""
    paths = [eval_summary_path(run_dir, protocol, s) for s in t["protocol_defs"][protocol]["splits"]]
    if not all(paths):
        return None
    evals, keys = [_load(p) for p in paths], (*t["classes"], "mean")
    if len(paths) > 1:
        cases = [os.path.join(os.path.dirname(p), "cases.csv") for p in paths]
        return {"dice": merged_dice(cases, t["classes"]), "hd95": {}, "asd": {}, "evals": evals}
    return {"evals": evals, **{m: {k: evals[0].get(m, {}).get(k) for k in keys} for m in ("dice", "hd95", "asd")}}


def deviations(t: dict, cell: Cell, run_dir: str, evals: list[dict]) -> list[str]:
    """Where a finished run's config.json (nested sections flattened), summary.json or evaluations disagree
    with the table's protocol (budget, inference mode, weights)."""
    want, config = dict(cell.budget, weights=t["weights"]), _flat(_load(os.path.join(run_dir, "config.json")))
    seen = {k: config[k] for k in cell.budget if k in config}
    for s in [_load(os.path.join(run_dir, "summary.json")), *evals]:
        seen.update({k: s[k] for k in ("weights", "infer", "max_iters") if k in s})
    return [f"{cell.key}: {k} {seen[k]} (table: {want[k]})" for k in want if k in seen and str(seen[k]) != str(want[k])]


def collect(t: dict, cells: list[Cell]) -> tuple[dict, list[str]]:
    """({(row, column, protocol): [score per seed]}, deviations of the finished runs from the protocol)."""
    results, notes = {}, []
    for cell in cells:
        if rd := run_state(cell)[0]:
            scores = {p: s for p in t["protocols"] if (s := score(t, rd, p)) is not None}
            for p, s in scores.items():
                results.setdefault((cell.row, cell.column, p), []).append(s)
            notes += deviations(t, cell, rd, [e for s in scores.values() for e in s["evals"]])
    return results, notes


def published(t: dict, cols: list[str], published_csv: str) -> tuple[list[list[str]], list[str]]:
    """Rows (method, protocol, Dice % per column) of configs/published.csv for this table, and their sources."""
    where = {float(t["columns"][c]["setting"]): i for i, c in enumerate(cols)}
    with open(published_csv, newline="", encoding="utf-8") as f:
        pub = [r for r in csv.DictReader(f) if r["benchmark"] == t["benchmark"] and float(r["setting"]) in where]
    rows = {}
    for r in pub:
        cells = rows.setdefault((r["method"], f"{t['protocol_defs'][r['protocol']]['label']}, published"),
                                [MISSING] * len(cols))
        cells[where[float(r["setting"])]] = f"{float(r['dice']):.2f}"
    return [[*k, *v] for k, v in rows.items()], list(dict.fromkeys(r["source"] for r in pub))


def protocol_text(t: dict, cells: list[Cell]) -> str:
    """The header sentence: budget, validation cadence, weights and inference mode of every cell."""
    b, w = t["budget"], t["weights"]
    text = f"**Same protocol in every cell:** a budget of {b['max_iters']} iterations (`-max_iters`)"
    text += f", validation every {b['val_every']} iterations (`-val_every`)" if "val_every" in b else ""
    text += f", evaluated from {WEIGHTS.get(w, w)} for every method (`-weights {w}`)"
    if "infer" in b:   # one mode per table: rows never set their own (reproduce.load_table refuses it)
        text += f", validated and reported with `-infer {b['infer']}` for every row"
    guide = t.get("flags", {}).get("guide_size")
    text += f", the SAM-2 guide at {guide} px (`-guide_size`)" if guide else ""
    if t.get("checkpoint", "best") == "last":
        return text + "; the last checkpoint is evaluated (nothing is selected on the reported volumes)."
    return text + "; the checkpoint is selected on the validation split."


def markdown(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *(f"| {' | '.join(r)} |" for r in rows), ""]


def write_tables(t: dict, cells: list[Cell], out: str, columns: list[str], published_csv: str, command: str) -> str:
    """<out>/<table>.md and .csv: mean Dice (published rows, then ours per protocol), then our per-class
    numbers under the first protocol, one table per column. ``command``: the reproduce.py arguments that
    wrote them (quoted in the .md). Returns the .md path."""
    (results, notes), cols, rows = collect(t, cells), columns, list(dict.fromkeys(c.row for c in cells))
    ours = lambda p: f"{t['protocol_defs'][p]['label']}, this repo"  # noqa: E731
    pub_rows, sources = published(t, cols, published_csv)
    header = ["Method", "Protocol", *[f"{t['columns'][c]['label']}: Dice %" for c in cols]]
    main = pub_rows + [[t["row_defs"][r]["label"], ours(p),
                        *[fmt([e["dice"]["mean"] for e in results.get((r, c, p), [])], 100) for c in cols]]
                       for p in t["protocols"] for r in rows]
    keys, p0 = (*t["classes"], "mean"), t["protocols"][0]
    dist = [(m, k) for m in ("hd95", "asd") for k in (keys if t["distance_units"] == "voxels" else ("mean",))]
    d_header = ["Method", "Labeled", "Protocol", *[f"Dice % {k}" for k in keys], *[f"{m.upper()} {k}" for m, k in dist]]
    detail = [[[t["row_defs"][r]["label"], t["columns"][c]["label"], ours(p0),
                *[fmt([e["dice"].get(k) for e in results.get((r, c, p0), [])], 100) for k in keys],
                *[fmt([e[m].get(k) for e in results.get((r, c, p0), [])]) for m, k in dist]] for r in rows]
              for c in cols]
    md = [f"# {t['title']}", "", f"Written by `python reproduce.py {command}`. "
          f"Dice in %; '{MISSING}' = no result (not run, not finished, or not published); mean ± std over seeds "
          "where there are several. 'published': configs/published.csv; 'this repo': evaluate.py on each run's "
          f"{t.get('checkpoint', 'best')}.pt.", "", protocol_text(t, cells), ""]
    md += [f"**Not under this protocol** (finished with other settings): {'; '.join(notes)}.", ""] if notes else []
    md += [*markdown(header, main), *[f"- {s}" for s in sources], "",
           f"## Per class (this repo; HD95/ASD in {t['distance_units']})", ""]
    md += [line for d in detail for line in markdown(d_header, d)] + t.get("notes", [])
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, t["name"])
    with open(path + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    with open(path + ".csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *main, *[x for d in detail for x in ([], d_header, *d)]])
    return path + ".md"
