"""The study report: the paper's table (methods x strategies, mean ± std over seeds, each strategy's difference to
fine-tuning), one row per cell, and plots; ``report.md``, ``report.json`` and PNGs in the study folder.

The metrics of each cell come from ``fastpnr.study.compare.summarize`` (the rows of ``fastpnr compare``), recomputed from
the run's accuracy matrix by ``evaluation.ContinualMetrics``. Only finished cells enter the table; the std is the
sample standard deviation over seeds (n - 1), shown once two seeds are done.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from .compare import format_value, honest_ylim, markdown, summarize
from fastpnr.errors import FastPNRError
from fastpnr.eval.evaluation import mean_and_std
from fastpnr.eval.stream_eval import plot_study_streams
from .paired import paired_difference
from fastpnr.system.atomic import write_json
from .cells import STUDY_FILE, Cell, CellState, _read_json, error_line, git_commit, progress_line, read_state

# (report.json key, column title, RunSummary field)
METRICS = (("final_average_accuracy", "A_T", "final_avg_acc"),
           ("average_incremental_accuracy", "avg. inc. acc", "avg_inc_acc"),
           ("forgetting", "forgetting", "forgetting"),
           ("forward_transfer", "fwd transfer", "fwd_transfer"))
BASELINE = "finetune"


# ------------------------------------------------------------------------------------------------ numbers
def _present(values) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def mean_std(values) -> tuple[float | None, float | None]:
    """(mean, sample std with n - 1) of the values that are there; std None below two values (not a spread of 0)."""
    vals = _present(values)
    if not vals:
        return None, None
    mean, std = mean_and_std(vals)
    return mean, (std if len(vals) > 1 else None)


def format_mean_std(mean, std) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _mean(values) -> float | None:
    return mean_std(values)[0]


def _mean_rows(rows: list[tuple[float, ...]]) -> list[float]:
    """Element-wise mean of equally long sequences (seeds' curves, matrix rows)."""
    return [sum(col) / len(col) for col in zip(*rows)]


# ------------------------------------------------------------------------------------------------ cells
def _summary(folder: Path, protocol):
    if not (folder / "metrics.json").exists():
        return None
    try:
        return summarize(folder, protocol)
    except FastPNRError:  # a run without that protocol, a half-written file: no figures for it
        return None


def cell_entry(cell: Cell, state: CellState, summary) -> dict:
    """The report.json entry of one cell: identity, status, metrics (so far), cost and the error of a failed cell."""
    entry = {**{k: v for k, v in cell.to_dict().items()}, "status": state.status,
             "tasks": f"{state.tasks_done}/{state.num_tasks or '?'}", "metrics": None, "img_per_s": None,
             "wall_s": state.wall_s, f"{state.device_kind}_hours": state.device_hours, "device": state.device_kind,
             "error": None}
    if summary is not None:
        entry["metrics"] = {key: getattr(summary, attr) for key, _, attr in METRICS}
        entry["metrics"].update(final_test_accuracy=summary.final_acc, protocol=summary.protocol)
        entry.update(img_per_s=summary.img_per_s, accuracy_after_task=list(summary.acc_by_task),
                     forgetting_by_task=list(summary.forgetting_by_task), accuracy_matrix=[list(r) for r in summary.matrix])
    if state.status == "failed":
        entry["error"] = state.record.get("error")
    if cell.backbone:  # a backbone axis: a table row (and its fine-tuning baseline) is a method on one backbone
        entry["method"] = f"{cell.method} ({cell.backbone})"
    return entry


# ------------------------------------------------------------------------------------------------ the table
def _groups(entries: list[dict]) -> dict[tuple, list[dict]]:
    """(preset, scenario) -> its cells, in grid order."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["preset"], e["scenario"]), []).append(e)
    return groups


def _ordered(entries: list[dict], key: str) -> list[str]:
    return list(dict.fromkeys(e[key] for e in entries))


def aggregate(entries: list[dict]) -> list[dict]:
    """One row per (preset, scenario, method, strategy): mean ± std over the done seeds, difference to fine-tuning."""
    rows = []
    for (preset, scenario), group in _groups(entries).items():
        for method in _ordered(group, "method"):
            by_reg = {reg: [e for e in group if e["method"] == method and e["regularizer"] == reg]
                      for reg in _ordered(group, "regularizer")}
            for reg, cells in by_reg.items():
                rows.append(_table_row(preset, scenario, method, reg, cells, by_reg.get(BASELINE)))
    return rows


def _table_row(preset, scenario, method, reg, cells: list[dict], baseline: list[dict] | None) -> dict:
    done = [e for e in cells if e["status"] == "done" and e["metrics"]]
    metrics = {}
    for key, _, _ in METRICS:
        mean, std = mean_std(e["metrics"][key] for e in done)
        metrics[key] = {"mean": mean, "std": std, "n": len(_present(e["metrics"][key] for e in done))}
    diff = None
    base_done = [e for e in baseline or [] if e["status"] == "done" and e["metrics"]]
    if reg != BASELINE and done and base_done:
        diff = {}
        for key, _, _ in METRICS:
            ours, theirs = _mean(e["metrics"][key] for e in done), _mean(e["metrics"][key] for e in base_done)
            diff[key] = None if ours is None or theirs is None else ours - theirs
    # the same seeds' difference (the seed's own effect cancels): by seed, mean, 95% t-interval
    paired = None if reg == BASELINE or not done or not base_done else {
        key: paired_difference({e["seed"]: e["metrics"][key] for e in done},
                               {e["seed"]: e["metrics"][key] for e in base_done}) for key, _, _ in METRICS}
    kind = done[-1]["device"] if done else "gpu"
    return {"preset": preset, "scenario": scenario, "method": method, "regularizer": reg,
            "seeds_done": [e["seed"] for e in done], "cells": len(cells), "metrics": metrics, "diff_to_finetune": diff,
            "paired_to_finetune": paired,
            "img_per_s": _mean(e["img_per_s"] for e in done), "device": kind,
            f"{kind}_hours_per_cell": _mean(e.get(f"{kind}_hours") for e in done)}


# ------------------------------------------------------------------------------------------------ markdown
def _group_title(preset, scenario) -> str:
    return f"{preset}" + (f", {scenario}-incremental" if scenario else "")


def table_markdown(rows: list[dict]) -> str:
    header = ["method", "strategy", "seeds"] + [title for _, title, _ in METRICS] + ["img/s", "device-h per cell"]
    body = []
    for r in rows:
        hours = r.get(f"{r['device']}_hours_per_cell")
        body.append([r["method"], r["regularizer"], f"{len(r['seeds_done'])}/{r['cells']}",
                     *[format_mean_std(r["metrics"][k]["mean"], r["metrics"][k]["std"]) for k, _, _ in METRICS],
                     format_value(r["img_per_s"]), _hours(hours, r["device"])])
    return markdown(header, body)


def diff_markdown(rows: list[dict]) -> str:
    header = ["method", "strategy"] + [f"Δ {title}" for _, title, _ in METRICS]
    body = [[r["method"], r["regularizer"], *[_signed(r["diff_to_finetune"][k]) for k, _, _ in METRICS]]
            for r in rows if r["diff_to_finetune"]]
    return markdown(header, body) if body else "(no strategy with fine-tuning finished beside it yet)"


def paired_markdown(rows: list[dict]) -> str:
    """One line per (method, strategy, metric): the per-seed differences to fine-tuning, mean, 95% t-interval."""
    body = []
    for r in rows:
        for key, title, _ in METRICS:
            p = (r.get("paired_to_finetune") or {}).get(key)
            if p is None:
                continue
            ci = "-" if p["ci"] is None else f"[{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}]"
            seeds = ", ".join(f"{s}: {d:+.2f}" for s, d in p["by_seed"].items())
            body.append([r["method"], r["regularizer"], f"Δ {title}", seeds, _signed(p["mean"]), ci, str(p["n"])])
    header = ["method", "strategy", "metric", "by seed", "mean", "95% t-interval", "n"]
    return markdown(header, body) if body else "(no seed with both the strategy and fine-tuning finished yet)"


def _hours(hours, kind: str) -> str:
    return "-" if not hours else f"{hours:.3g} {kind.upper()}-h"


def _signed(v) -> str:
    return "-" if v is None else f"{v:+.2f}"


def cells_markdown(entries: list[dict]) -> str:
    header = ["cell", "status", "tasks"] + [title for _, title, _ in METRICS] + ["img/s", "device-h", "error"]
    body = []
    for e in entries:
        m = e["metrics"] or {}
        hours = e.get(f"{e['device']}_hours")
        body.append([e["name"], e["status"], e["tasks"], *[format_value(m.get(k)) for k, _, _ in METRICS],
                     format_value(e["img_per_s"]), _hours(hours, e["device"]),
                     (e["error"] or "").replace("|", "\\|")])
    return markdown(header, body)


def report_markdown(out: Path, rows: list[dict], entries: list[dict], plots: list[str], head: dict) -> str:
    protocol = head["protocol"] or "each run's own (metrics.json protocol)"
    lines = [f"# fastpnr study: {out.name}", "", f"- {head['progress']}", f"- protocol: {protocol}",
             f"- command: `{head['command']}`",
             f"- fastpnr commit of the cells: {', '.join(head['cell_commits']) or 'unknown'}; of this report: "
             f"{head['commit'] or 'unknown'}",
             f"- written: {head['written']}", "",
             "Mean ± sample std (n − 1) over the finished seeds; A_T = final average accuracy over the tasks, "
             "avg. inc. acc = mean over k of the accuracy after task k; forgetting and forward transfer as in "
             "`fastpnr compare`; device-hours = wall time × GPUs (or CPU threads) of the cell.", ""]
    for (preset, scenario), group_rows in _groups(rows).items():
        lines += [f"## {_group_title(preset, scenario)}", "", table_markdown(group_rows), "",
                  "Difference to fine-tuning (same method, mean minus mean):", "", diff_markdown(group_rows), "",
                  "Paired difference to fine-tuning (same seed, strategy minus fine-tuning; mean and 95% "
                  "t-interval, t with n − 1 df):", "", paired_markdown(group_rows), ""]
    lines += ["## Cells", "", cells_markdown(entries), ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbars(ax, values: list[tuple[float, ...]], label: str, dodge: float = 0.0) -> None:
    """Seed mean with ± sample-std error bars where n > 1 (the seeds whose curves have the full length); ``dodge``
    shifts the points sideways so that strategies with equal values stay apart."""
    n = max(len(v) for v in values)
    full = [v for v in values if len(v) == n]
    stats = [mean_std(col) for col in zip(*full)]
    yerr = [s for _, s in stats] if len(full) > 1 else None
    ax.errorbar([x + dodge for x in range(n)], [m for m, _ in stats], yerr=yerr, marker="o", capsize=3,
                label=f"{label} (n={len(full)})")


def _done_by(group: list[dict], method: str, reg: str, key: str) -> list:
    return [e[key] for e in group if e["method"] == method and e["regularizer"] == reg and e["status"] == "done"
            and e.get(key)]


def _protocol(group: list[dict]) -> str:
    """The evaluation protocol of the finished cells' figures ("linear", or "linear/knn" when runs differ)."""
    found = dict.fromkeys(e["metrics"].get("protocol") for e in group if e["metrics"])
    return "/".join(str(p) for p in found if p) or "?"


# (report.json key of the curve, figure title, y-axis label, x-axis label, y range kept in view, note)
CURVES = {
    "accuracy_curves": ("accuracy_after_task", "A_k: mean accuracy over the tasks seen after task k",
                        "A_k, test accuracy (%)", "after task k", (0.0, 100.0), None),
    "forgetting": ("forgetting_by_task", "forgetting of each earlier task at the end",
                   "forgetting (percentage points)", "task", (-100.0, 100.0),
                   "forgetting = best earlier accuracy minus the final one; below 0: the accuracy rose"),
}


def curves_figure(group: list[dict], stem: str):
    """One panel per method, one line (seed mean, error bars where n > 1) per strategy, on a y-axis at least
    ``MIN_SPAN`` points tall (``compare.honest_ylim``); None when no finished cell has that curve."""
    key, title, ylabel, xlabel, bounds, note = CURVES[stem]
    methods, regs = _ordered(group, "method"), _ordered(group, "regularizer")
    if not any(_done_by(group, m, r, key) for m in methods for r in regs):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(methods), figsize=(max(4.5 * len(methods), 6.5), 4.2 if note else 3.9),
                             squeeze=False)
    every = [v for m in methods for r in regs for c in _done_by(group, m, r, key) for v in c]
    ylim = honest_ylim(every, include_zero=stem == "forgetting", bounds=bounds)  # one scale for all panels
    for ax, method in zip(axes[0], methods):
        curves = {reg: _done_by(group, method, reg, key) for reg in regs}
        drawn = [r for r in regs if curves[r]]
        for k, reg in enumerate(drawn):
            _errorbars(ax, curves[reg], reg, dodge=0.06 * (k - (len(drawn) - 1) / 2))
        ax.set_title(method if drawn else f"{method}: no finished cell")
        longest = max((len(c) for cs in curves.values() for c in cs), default=1)
        ax.set_xticks(range(longest))
        ax.set_xlim(-0.5, longest - 0.5)
        ax.set_ylim(*ylim)
        if stem == "forgetting":
            ax.axhline(0.0, color="0.5", lw=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    _suptitle(fig, f"{title} ({_protocol(group)} protocol; seed mean ± std)")
    if note:
        fig.text(0.5, 0.01, _wrap(fig, note, 8), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04 if note else 0, 1, 1))
    return fig


def matrices_figure(group: list[dict]):
    """Seed-mean accuracy matrices side by side (rows methods, columns strategies) on one colour scale (0-100 %,
    one colour bar); a cell with no finished seed says so in its panel. None when no cell has finished."""
    methods, regs = _ordered(group, "method"), _ordered(group, "regularizer")
    done = {(m, r): _done_by(group, m, r, "accuracy_matrix") for m in methods for r in regs}
    if not any(done.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(methods), len(regs), figsize=(3.2 * len(regs) + 1.0, 2.8 * len(methods) + 0.5),
                             squeeze=False)
    image = None
    for i, method in enumerate(methods):
        for j, reg in enumerate(regs):
            ax, mats = axes[i][j], done[(method, reg)]
            ax.set_title(f"{method} + {reg}" + (f" (n={len(mats)})" if mats else ""), fontsize=9)
            if not mats:
                _not_finished(ax, [e["status"] for e in group if e["method"] == method and e["regularizer"] == reg])
                continue
            matrix = [_mean_rows(rows) for rows in zip(*mats)]
            image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=100)
            for r, row in enumerate(matrix):
                for c, v in enumerate(row):
                    ax.text(c, r, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=7)
            ax.set_xticks(range(len(matrix[0])))
            ax.set_yticks(range(len(matrix)))
            ax.set_xlabel("on task")
            ax.set_ylabel("after task")
    _suptitle(fig, f"test accuracy (%) after task i on task j, {_protocol(group)} protocol, seed mean")
    fig.tight_layout()
    fig.colorbar(image, ax=axes.ravel().tolist(), label="accuracy (%)", shrink=0.8)
    return fig


def _wrap(fig, text: str, fontsize: float) -> str:
    """``text`` in lines that fit the figure's width (at 10 pt about 14 characters per inch)."""
    import textwrap

    return textwrap.fill(text, width=max(20, int(fig.get_figwidth() * 140 / fontsize)))


def _suptitle(fig, text: str) -> None:
    fig.suptitle(_wrap(fig, text, 10), fontsize=10)


def _not_finished(ax, statuses: list[str]) -> None:
    """An unfinished cell's panel: a framed "not finished" with its cells' states, not an empty white space."""
    ax.set_xticks([])
    ax.set_yticks([])
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
    ax.text(0.5, 0.5, f"not finished\n({counts})", ha="center", va="center", transform=ax.transAxes, fontsize=9,
            color="0.35")


# the pseudo-negative diagnostic (issue 33 §1, fastpnr/losses/pnr_diagnostic.py): metrics.json train_epochs' diag_* keys
DIAGNOSTIC_LINES = (("diag_positive", "positive z·z⁺"), ("diag_frozen_positive", "frozen copy of the positive z·f⁺"),
                    ("diag_pseudo_negatives", "other pseudo-negatives z·f"), ("diag_gap", "gap (positive − frozen)"),
                    ("diag_pull", "pull (weighted positive term)"), ("diag_push", "push (weighted negative term)"))


def diagnostic_curves(out: Path, group: list[dict], method: str, reg: str) -> tuple[dict, list[int], int]:
    """({diag key: seed mean per epoch}, the epochs where a task starts, seeds) of the finished cells of (method,
    reg) whose metrics.json has the diagnostic; the seeds with the most epochs."""
    runs = []
    for e in group:
        if e["method"] == method and e["regularizer"] == reg and e["status"] == "done":
            epochs = (_read_json(out / e["name"] / "metrics.json") or {}).get("train_epochs") or []
            if any(k.startswith("diag_") for row in epochs for k in row):
                runs.append(epochs)
    if not runs:
        return {}, [], 0
    n = max(len(r) for r in runs)
    runs = [r for r in runs if len(r) == n]
    curves = {}
    for key, _ in DIAGNOSTIC_LINES:
        per_epoch = [[row[key] for row in rows if key in row] for rows in zip(*runs)]
        if any(per_epoch):
            curves[key] = [sum(v) / len(v) if v else math.nan for v in per_epoch]
    starts = [i for i, row in enumerate(runs[0]) if i == 0 or row["task"] != runs[0][i - 1]["task"]]
    return curves, starts, len(runs)


def diagnostic_figure(out: Path, group: list[dict]):
    """One panel per method with a finished PNR cell that logged the diagnostic: its epoch means of the logits (or the
    pull and push terms) over the run, task starts dotted, and the fine-tuning twin's positive dashed."""
    panels = [(m, *diagnostic_curves(out, group, m, "pnr")) for m in _ordered(group, "method")]
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for ax, (method, curves, starts, seeds) in zip(axes[0], panels):
        for key, label in DIAGNOSTIC_LINES:
            if key in curves:
                ax.plot(range(len(curves[key])), curves[key], marker=".", label=label)
        twin, _, twin_seeds = diagnostic_curves(out, group, method, BASELINE)
        if "diag_positive" in twin:
            ax.plot(range(len(twin["diag_positive"])), twin["diag_positive"], "k--",
                    label=f"fine-tuning: positive (n={twin_seeds})")
        for x in starts[1:]:
            ax.axvline(x - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{method} + pnr (n={seeds}); task starts dotted", fontsize=9)
        ax.set_xlabel("epoch of the run")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("loss term" if "diag_pull" in curves else "cosine (the logit before the temperature)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _is_stream(out: Path, entry: dict) -> bool:
    """A cell of a stream run: its figures are the curves over the stream (its one matrix row is not a task sequence)."""
    path = out / entry["name"] / "metrics.json"
    return path.exists() and "stream" in _read_json(path)


def write_plots(out: Path, entries: list[dict]) -> list[str]:
    """The task figures of the task-based cells, per (preset, scenario), and the stream curves of the stream cells."""
    groups = _groups([e for e in entries if not _is_stream(out, e)])
    names = []
    for (preset, scenario), group in groups.items():
        suffix = "" if len(groups) == 1 else "-" + "-".join(str(p) for p in (preset, scenario) if p)
        figures = {"accuracy_curves": lambda: curves_figure(group, "accuracy_curves"),
                   "forgetting": lambda: curves_figure(group, "forgetting"),
                   "accuracy_matrices": lambda: matrices_figure(group),
                   "pnr_diagnostic": lambda: diagnostic_figure(out, group)}
        for stem, draw in figures.items():
            fig = draw()
            if fig is None:
                continue
            fig.savefig(out / f"{stem}{suffix}.png", dpi=110)
            _pyplot().close(fig)
            names.append(f"{stem}{suffix}.png")
    stream = plot_study_streams(out, entries)  # stream runs: accuracy over the stream, per strategy
    return names + ([stream] if stream else [])


# ------------------------------------------------------------------------------------------------ the report
def write_report(out: Path, cells: list[Cell], protocol: str | None = None) -> dict:
    """Write report.md, report.json and the PNGs of the study in ``out``; returns the report.json object."""
    study = _read_json(out / STUDY_FILE)
    states = [read_state(out / c.name) for c in cells]
    entries = []
    for c, s in zip(cells, states):
        entry = cell_entry(c, s, _summary(out / c.name, protocol))
        if s.status == "failed" and not entry["error"]:
            entry["error"] = error_line(out / c.name)
        entries.append(entry)
    rows = aggregate(entries)
    starts = [a["start"] for s in states for a in s.record.get("attempts", [])]
    now = time.time()
    head = {"progress": progress_line(states, study.get("slots", 1), now - min(starts) if starts else 0.0, now, cells),
            "protocol": protocol, "command": study.get("command", ""), "commit": git_commit(),
            "cell_commits": sorted({a["commit"] for s in states for a in s.record.get("attempts", []) if a.get("commit")}),
            "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    plots = write_plots(out, entries)
    report = {**head, "cells": entries, "table": rows, "plots": plots}
    write_json(out / "report.json", report)
    (out / "report.md").write_text(report_markdown(out, rows, entries, plots, head))
    return report
