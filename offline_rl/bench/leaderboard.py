"""Leaderboards from local result files: mean ± std over seeds per (algorithm, dataset), as Markdown, CSV or HTML
(with embedded learning-curve plots).

Both protocols of `datasets-and-evaluation.md` §7.1 are reported and labelled: **last** is the final evaluation of
each run and **best** the maximum over all its evaluations, each averaged over seeds. The spread is the sample
standard deviation (ddof=1; 0 for a single seed). Datasets are grouped by their reference label (`dataset_label`),
so that results against different reference scores (e.g. D4RL-v2, Minari, the toolkit's own generated datasets)
never share a table.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offline_rl.bench.runner import RESULT_FILE
from offline_rl.bench.suite import slugify
from offline_rl.errors import UserError
from offline_rl.utils.io import atomic_write, atomic_write_text, read_json

log = logging.getLogger(__name__)

FORMATS = ("md", "csv", "html")
FINISHED = ("completed", "diverged")  # a diverged run is a result (a bad one); an interrupted run is not
UNLABELLED = "reference not recorded"
CSV_COLUMNS = ("label", "dataset", "algo", "metric", "n_seeds", "n_diverged", "steps", "eval_episodes",
               "last_mean", "last_std", "best_mean", "best_std", "behavior_score", "updates_per_s")
_REQUIRED_KEYS = ("algo", "dataset", "seed", "status", "curve")

INTRO = [
    "Scores are normalised returns on the 0–100 scale, 100·(return − ref_min)/(ref_max − ref_min); each section "
    "heading names the source of its reference scores. Datasets without reference scores show raw returns, marked "
    "\"(return)\".",
    "Cells give last and best: last = the final evaluation of each run, best = the maximum over all evaluations "
    "of each run, each as mean ± sample standard deviation (ddof=1; 0 for one seed) over seeds. The best mean "
    "of each row (by last) is in bold. \"seeds\" is the seed count; an algorithm with fewer seeds is marked "
    "[n=k], and runs that diverged (counted, with their scores) are marked [k diverged].",
    "behaviour = the dataset's own normalised return, which the algorithms must beat.",
]


# ----------------------------------------------------------------------------------------------- collecting


def collect(results_dir: str | os.PathLike) -> list[dict]:
    """Every `result.json` under `results_dir` (recursively). Unreadable or malformed files are skipped with a
    warning; a missing folder, or one without any result, is a UserError."""
    root = Path(results_dir)
    if not root.is_dir():
        raise UserError(f"results folder {root} does not exist or is not a folder")
    records = []
    for path in sorted(root.rglob(RESULT_FILE)):
        try:
            record = read_json(path)
        except (OSError, ValueError) as e:
            log.warning("skipping %s: cannot read it as JSON (%s)", path, e)
            continue
        if not isinstance(record, dict):
            record = {}
        missing = [k for k in _REQUIRED_KEYS if k not in record]
        if missing:
            log.warning("skipping %s: not a result record (missing %s)", path, ", ".join(missing))
            continue
        records.append(record)
    if not records:
        raise UserError(f"no {RESULT_FILE} files under {root}")
    return records


# ---------------------------------------------------------------------------------------------- aggregating


def aggregate(records: Iterable[dict]) -> list[dict]:
    """One row per (reference label, dataset, algorithm) over the finished runs (completed or diverged).

    Row keys are `CSV_COLUMNS`. `metric` is "score" (normalised) for a dataset whose runs all have a normalised
    final score and "return" otherwise; `last_*`/`best_*` are in that unit. Std is the sample std (ddof=1).
    """
    finished = _finished(records)
    metric_of = {dataset: _metric(recs) for dataset, recs in _group(finished, lambda r: r["dataset"]).items()}
    rows = []
    for (label, dataset, algo), recs in sorted(_group(finished, _row_key).items()):
        metric = metric_of[dataset]
        seeds = [r["seed"] for r in recs]
        if len(set(seeds)) < len(seeds):
            log.warning("%s on %s: seeds %s appear more than once; the results folder mixes several runs",
                        algo, dataset, sorted(seeds))
        last_mean, last_std = mean_std([_last(r, metric) for r in recs])
        best_mean, best_std = mean_std([_best(r, metric) for r in recs])
        rows.append({
            "label": label, "dataset": dataset, "algo": algo, "metric": metric,
            "n_seeds": len(recs),
            "n_diverged": sum(r["status"] == "diverged" for r in recs),
            "steps": _common(recs, lambda r: r.get("steps"), f"{algo} on {dataset}", "steps"),
            "eval_episodes": _common(recs, _eval_episodes, f"{algo} on {dataset}", "eval_episodes"),
            "last_mean": last_mean, "last_std": last_std, "best_mean": best_mean, "best_std": best_std,
            "behavior_score": _behaviour(recs),
            "updates_per_s": mean_std([r.get("updates_per_s") for r in recs])[0],
        })
    return rows


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1; 0.0 for one value) of the finite numbers in `values`; (None, None) if none."""
    xs = [float(v) for v in values if _is_number(v)]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return mean, std


def _finished(records: Iterable[dict]) -> list[dict]:
    records = list(records)
    finished = [r for r in records if r.get("status") in FINISHED]
    if len(finished) < len(records):
        log.info("leaving out %d unfinished runs (interrupted or failed)", len(records) - len(finished))
    return finished


def _group(records: Iterable[dict], key: Callable[[dict], Any]) -> dict[Any, list[dict]]:
    groups: dict[Any, list[dict]] = defaultdict(list)
    for r in records:
        groups[key(r)].append(r)
    return groups


def _row_key(record: dict) -> tuple[str, str, str]:
    return record.get("dataset_label") or UNLABELLED, record["dataset"], record["algo"]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _metric(records: list[dict]) -> str:
    """"score" when every run of a dataset has normalised scores, else "return" (no reference scores)."""
    scored = all(_is_number(r.get("final_score")) or _curve_values(r, "score") for r in records)
    return "score" if scored else "return"


def _behaviour(records: list[dict]) -> float | None:
    """The dataset's own normalised score (the same in every run of a dataset)."""
    return next((r["behavior_score"] for r in records if _is_number(r.get("behavior_score"))), None)


def _curve_values(record: dict, metric: str) -> list[float]:
    """The evaluations of a run, in `metric` units (curve rows are [step, normalized_score, return])."""
    column = 1 if metric == "score" else 2
    return [row[column] for row in record.get("curve") or [] if _is_number(row[column])]


def _last(record: dict, metric: str) -> float | None:
    value = record.get("final_score" if metric == "score" else "final_return")
    if _is_number(value):
        return value
    values = _curve_values(record, metric)
    return values[-1] if values else None


def _best(record: dict, metric: str) -> float | None:
    value = record.get("best_score" if metric == "score" else "best_return")
    if _is_number(value):
        return value
    values = _curve_values(record, metric)
    return max(values) if values else _last(record, metric)


def _eval_episodes(record: dict) -> Any:
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    return record.get("eval_episodes", config.get("eval_episodes"))


def _common(records: list[dict], get: Callable[[dict], Any], what: str, key: str) -> Any:
    """The value all records share, or the largest one with a warning when they differ."""
    values = {get(r) for r in records} - {None}
    if len(values) > 1:
        log.warning("%s: runs differ in %s (%s); the results folder mixes several settings",
                    what, key, sorted(values))
    return max(values) if values else None


# -------------------------------------------------------------------------------------------------- tables


@dataclass
class _Table:
    """One leaderboard section, independent of the output format: cells are (text, bold)."""

    label: str
    notes: list[str]
    header: list[str]
    body: list[list[tuple[str, bool]]]


def _fmt(x: float | None, std: float | None = None) -> str:
    if x is None:
        return "—"
    return f"{x:.1f}" if std is None else f"{x:.1f} ± {std:.1f}"


def _cell(row: dict, n_seeds: int) -> str:
    """"last m ± s (best m ± s)", noting diverged runs and a seed count below the row's `n_seeds`."""
    text = f"last {_fmt(row['last_mean'], row['last_std'])} (best {_fmt(row['best_mean'], row['best_std'])})"
    notes = ([f"n={row['n_seeds']}"] if row["n_seeds"] < n_seeds else []) + (
        [f"{row['n_diverged']} diverged"] if row["n_diverged"] else [])
    return text + (f" [{', '.join(notes)}]" if notes else "")


def _values_text(rows: list[dict], key: str) -> str:
    values = sorted({r[key] for r in rows if r[key] is not None})
    return "/".join(str(v) for v in values) or "not recorded"


def _tables(rows: list[dict]) -> list[_Table]:
    """One table per reference label: a row per dataset, a column per algorithm, plus behaviour and seeds."""
    tables = []
    for label, section in sorted(_group(rows, lambda r: r["label"]).items()):
        algos = sorted({r["algo"] for r in section})
        body = []
        for dataset, drows in sorted(_group(section, lambda r: r["dataset"]).items()):
            by_algo = {r["algo"]: r for r in drows}
            top = max((r["last_mean"] for r in drows if r["last_mean"] is not None), default=None)
            metric = drows[0]["metric"]
            n_seeds = max(r["n_seeds"] for r in drows)
            behaviour = drows[0]["behavior_score"] if metric == "score" else None
            cells = [(_cell(by_algo[a], n_seeds), top is not None and by_algo[a]["last_mean"] == top)
                     if a in by_algo else ("—", False) for a in algos]
            name = dataset if metric == "score" else f"{dataset} (return)"
            body.append([(name, False), (_fmt(behaviour), False), *cells, (str(n_seeds), False)])
        notes = [f"Steps per run: {_values_text(section, 'steps')}"
                 + (f"; evaluation episodes: {_values_text(section, 'eval_episodes')}."
                    if any(r["eval_episodes"] for r in section) else ".")]
        tables.append(_Table(label, notes, ["dataset", "behaviour", *algos, "seeds"], body))
    return tables


def to_markdown(rows: list[dict], preamble: tuple[str, ...] = ()) -> str:
    """The leaderboard as Markdown: `preamble` (e.g. the suite's description), an explanation, then one table per
    reference label."""
    out = ["# offline-rl leaderboard", ""]
    for paragraph in (*preamble, *INTRO):
        out += [paragraph, ""]
    if not rows:
        out.append("No finished runs.")
    for table in _tables(rows):
        out += [f"## Reference scores: {table.label}", "", *table.notes, "",
                "| " + " | ".join(table.header) + " |",
                "|" + "|".join(["---"] + ["---:"] * (len(table.header) - 1)) + "|"]
        out += ["| " + " | ".join(f"**{text}**" if bold else text for text, bold in cells) + " |"
                for cells in table.body]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def to_csv(rows: list[dict]) -> str:
    """One line per (label, dataset, algorithm) with every `CSV_COLUMNS` field; floats rounded to 4 decimals."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: round(row[k], 4) if isinstance(row[k], float) else row[k] for k in CSV_COLUMNS})
    return buf.getvalue()


def to_html(rows: list[dict], records: list[dict], preamble: tuple[str, ...] = ()) -> str:
    """A self-contained HTML page: the tables, then one learning-curve plot per dataset (base64 PNG)."""
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\"><title>offline-rl leaderboard</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}td{text-align:right}td:first-child{text-align:left}"
             "</style></head><body>", "<h1>offline-rl leaderboard</h1>", *(f"<p>{e(p)}</p>" for p in (*preamble, *INTRO))]
    for table in _tables(rows):
        parts += [f"<h2>Reference scores: {e(table.label)}</h2>", *(f"<p>{e(n)}</p>" for n in table.notes),
                  "<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in table.header) + "</tr>"]
        parts += ["<tr>" + "".join(f"<td><b>{e(text)}</b></td>" if bold else f"<td>{e(text)}</td>"
                                   for text, bold in cells) + "</tr>" for cells in table.body]
        parts.append("</table>")
    figures = curve_pngs(records)
    if figures:
        parts.append("<h2>Learning curves</h2>")
    for dataset, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure><img alt=\"learning curves on {e(dataset)}\" src=\"data:image/png;base64,{data}\">"
                     f"<figcaption>{e(dataset)}: mean over seeds ± sample std; dashed: behaviour score</figcaption>"
                     "</figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------------- plots


def curve_pngs(records: Iterable[dict]) -> dict[str, bytes]:
    """One PNG per dataset: per algorithm the mean curve over seeds with a ±std band, and the behaviour score
    as a dashed line. Uses matplotlib's Agg canvas directly (no pyplot, no global backend change)."""
    from matplotlib.figure import Figure

    finished = _finished(records)
    pngs = {}
    algos = sorted({r["algo"] for r in finished})
    colours = {a: f"C{i % 10}" for i, a in enumerate(algos)}  # the same colour for an algorithm in every plot
    for dataset, recs in sorted(_group(finished, lambda r: r["dataset"]).items()):
        metric = _metric(recs)
        fig = Figure(figsize=(6.4, 4.0), dpi=100)
        ax = fig.subplots()
        for algo, runs in sorted(_group(recs, lambda r: r["algo"]).items()):
            steps, means, stds = _mean_curve(runs, metric)
            ax.plot(steps, means, color=colours[algo], label=f"{algo} (n={len(runs)})")
            ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=colours[algo], alpha=0.2, linewidth=0)
        behaviour = _behaviour(recs)
        if metric == "score" and behaviour is not None:
            ax.axhline(behaviour, color="0.3", linestyle="--", linewidth=1, label="behaviour")
        ax.set_title(f"{dataset} ({recs[0].get('dataset_label') or UNLABELLED})")
        ax.set_xlabel("training step")
        ax.set_ylabel("normalised score (0–100)" if metric == "score" else "return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        pngs[dataset] = buf.getvalue()
    return pngs


def _mean_curve(runs: list[dict], metric: str) -> tuple[list[int], list[float], list[float]]:
    """Mean and sample std over seeds at each evaluation step (a step some seeds lack uses the others)."""
    column = 1 if metric == "score" else 2
    at_step: dict[int, list[float]] = defaultdict(list)
    for r in runs:
        for row in r.get("curve") or []:
            if _is_number(row[column]):
                at_step[row[0]].append(row[column])
    steps = sorted(at_step)
    stats = [mean_std(at_step[s]) for s in steps]
    return steps, [m for m, _ in stats], [s for _, s in stats]


def plot_curves(records: Iterable[dict], out_dir: str | os.PathLike) -> list[Path]:
    """Write `<out_dir>/<dataset>.png` for each dataset (see `curve_pngs`); return the paths."""
    paths = []
    for dataset, png in curve_pngs(records).items():
        path = Path(out_dir) / f"{slugify(dataset)}.png"
        atomic_write(path, lambda f, data=png: f.write(data), mode="wb")
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ one call


def write_leaderboard(results_dir: str | os.PathLike, fmt: str = "md",
                      out: str | os.PathLike | None = None) -> str:
    """Collect, aggregate and render the results under `results_dir` as `fmt` (md, csv or html); write the
    text to `out` (atomically) when given, and return it."""
    if fmt not in FORMATS:
        raise UserError(f"unknown leaderboard format '{fmt}' (choose from: {', '.join(FORMATS)})")
    if out is not None and Path(out).is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name, e.g. {Path(out) / f'leaderboard.{fmt}'}")
    records = collect(results_dir)
    rows = aggregate(records)
    if not rows:
        raise UserError(f"no finished runs under {results_dir} (all {len(records)} results are unfinished)")
    preamble = _suite_preamble(Path(results_dir))
    text = to_html(rows, records, preamble) if fmt == "html" else to_markdown(rows, preamble) if fmt == "md" \
        else to_csv(rows)
    if out is not None:
        atomic_write_text(out, text)
    return text


def _suite_preamble(results_dir: Path) -> tuple[str, ...]:
    """"Suite NAME: DESCRIPTION" when `results_dir` holds a benchmark's `suite.json` (what the runs were, cheaper
    settings included), else nothing."""
    try:
        suite = read_json(results_dir / "suite.json")
    except (OSError, ValueError):
        return ()
    if not isinstance(suite, dict) or not suite.get("name"):
        return ()
    return (f"Suite {suite['name']}" + (f": {suite['description']}." if suite.get("description") else "."),)
