"""Compare finished (or running) continual runs side by side: the FT / CaSSLe / PNR table of the papers.

Each run folder holds ``config.json`` and ``metrics.json`` (written after every task). For one evaluation protocol
(linear, knn, online or official; default: each run's own), a row gives the final test accuracy, the final average
accuracy A_T, the average incremental accuracy (mean over k of A_k) and forgetting F_T recomputed from that
protocol's accuracy matrix (``evaluation.ContinualMetrics``), the forward transfer when the run measured the
random-init baseline, the mean training throughput and the training time. When the run fitted several probes per
task (``eval.linear_seeds``), the final accuracy and A_T show "± std" over the fits: the evaluation noise a difference
between runs must clear. A run that has not finished all its tasks shows ``k/T`` tasks and its figures so far.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from fastpnr.config import PROTOCOLS
from fastpnr.errors import DataError, require
from fastpnr.eval.stream_eval import plot_stream, stream_figures
from fastpnr.eval.evaluation import ContinualMetrics, mean_and_std

TABLE_SUFFIXES = (".md", ".json", ".csv")
COLUMNS = ("run", "method", "regularizer", "data", "tasks", "protocol", "final_acc", "final_avg_acc", "avg_inc_acc",
           "forgetting", "fwd_transfer", "img_per_s", "train_min")
STD_COLUMNS = {"final_acc": "final_acc_std", "final_avg_acc": "final_avg_acc_std"}  # shown as "mean ± std"


@dataclass(frozen=True)
class RunSummary:
    run: str
    method: str
    regularizer: str
    data: str                 # dataset/scenario
    tasks: str                # done/total
    protocol: str
    final_acc: float
    final_acc_std: float | None       # over the probe fits (None: one fit)
    final_avg_acc: float              # A_T
    final_avg_acc_std: float | None   # A_T's std over the probe fits
    avg_inc_acc: float                # mean over k of A_k
    forgetting: float
    fwd_transfer: float | None
    img_per_s: float | None
    train_min: float
    curve: tuple[float, ...]  # test accuracy after each finished task (the protocol's)
    curve_std: tuple[float, ...] = ()  # its std over the probe fits (empty: one fit)
    acc_by_task: tuple[float, ...] = ()       # A_k after each finished task k
    forgetting_by_task: tuple[float, ...] = ()  # each earlier task's drop at the last finished task
    matrix: tuple[tuple[float, ...], ...] = ()  # the protocol's accuracy matrix, finished rows
    tasks_done: int = 0
    num_tasks: int = 0
    stream_curve: tuple = ()  # a stream run's evaluation points (metrics.json "stream" "curve"); empty otherwise


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path.parent} is not a fastpnr run folder: {path.name} is missing") from None
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}".replace("\n", " ")) from None


def read_run(run_dir) -> tuple[dict, dict]:
    """(config.json, metrics.json) of a run folder, or a one-line DataError."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise DataError(f"run folder {str(folder)!r} does not exist")
    return _read_json(folder / "config.json"), _read_json(folder / "metrics.json")


def summarize(run_dir, protocol: str | None = None) -> RunSummary:
    """One row for ``run_dir``; ``protocol`` None = the protocol the run reported."""
    require(protocol is None or protocol in PROTOCOLS, "protocol", protocol, PROTOCOLS)
    cfg, m = read_run(run_dir)
    return summarize_metrics(Path(run_dir), cfg, m, protocol)


def summarize_metrics(folder: Path, cfg: dict, m: dict, protocol: str | None = None) -> RunSummary:
    """The row of one run from its config and metrics dicts (the metrics recomputed from the protocol's matrix)."""
    proto = protocol or m.get("protocol", "linear")
    matrices = m.get("matrices", {})
    if proto not in matrices or not matrices[proto]:
        have = ", ".join(sorted(matrices)) or "none"
        raise DataError(f"{folder}: no {proto!r} accuracy matrix in metrics.json (protocols: {have})")
    matrix = matrices[proto]
    cm = ContinualMetrics(matrix)
    curve = tuple(m.get("test_accuracy_by_protocol", {}).get(proto, []))
    curve_std = m.get("test_accuracy_std_by_protocol", {}).get(proto, [])
    per_fit = m.get("matrices_by_fit", {}).get(proto, [])
    random_init = m.get("random_init_accuracy", {}).get(proto)
    ips = [x for x in m.get("images_per_second", []) if x]
    data = cfg.get("data", {})
    num_tasks = m.get("num_tasks", data.get("num_tasks", 0))
    # a stream (one row over its chunks): A_T over all chunks, the average accuracy and forgetting along the stream
    stream = stream_figures(m, proto) or {}
    return RunSummary(
        run=folder.name, method=cfg.get("method", {}).get("name", "?"),
        regularizer=cfg.get("regularizer", {}).get("name", "?"),
        data=f"{data.get('dataset', '?')}/{data.get('scenario', '?')}",
        tasks=f"{cm.tasks_done}/{num_tasks or '?'}", protocol=proto,
        final_acc=curve[-1] if curve else float("nan"),
        final_acc_std=curve_std[-1] if len(per_fit) > 1 and curve_std else None,
        final_avg_acc=stream.get("final_avg_acc", cm.final_average_accuracy()), final_avg_acc_std=_std_over_fits(per_fit),
        avg_inc_acc=stream.get("avg_inc_acc", cm.average_incremental_accuracy()),
        forgetting=stream.get("forgetting", cm.forgetting()),
        fwd_transfer=cm.forward_transfer(random_init) if random_init else None,
        img_per_s=sum(ips) / len(ips) if ips else None, train_min=sum(m.get("task_time_s", [])) / 60.0,
        curve=curve, curve_std=tuple(curve_std) if len(per_fit) > 1 else (),
        acc_by_task=tuple(ContinualMetrics(matrix[: k + 1]).final_average_accuracy() for k in range(cm.tasks_done)),
        forgetting_by_task=tuple(cm.forgetting_per_task()), matrix=tuple(tuple(row) for row in matrix),
        tasks_done=cm.tasks_done, num_tasks=int(num_tasks or 0),
        stream_curve=tuple(m["stream"]["curve"]) if stream else ())


def _std_over_fits(matrices: list) -> float | None:
    """The standard deviation of A_T over the per-fit accuracy matrices (None with fewer than two fits)."""
    if len(matrices) < 2 or not all(matrices):
        return None
    return mean_and_std([ContinualMetrics(mx).final_average_accuracy() for mx in matrices])[1]


def format_value(value) -> str:
    """A table cell: '-' for missing/NaN, thousands separators from 1000 on, else two decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
    return str(value)


def _cell_with_std(d: dict, column: str) -> str:
    std = d.get(STD_COLUMNS.get(column, ""))
    return format_value(d[column]) + (f" ± {std:.2f}" if std is not None else "")


def markdown(header, rows) -> str:
    """A markdown table; cells that are not strings go through ``format_value``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else format_value(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(rows: list[RunSummary]) -> str:
    return markdown(COLUMNS, [[_cell_with_std(asdict(r), c) for c in COLUMNS] for r in rows])


def check_outputs(out=None, plot=None) -> None:
    """Fail before any work on an output path whose type is not written: tables .md/.json/.csv, plots .png."""
    require(out is None or Path(out).suffix in TABLE_SUFFIXES, "out", None if out is None else str(out),
            "a .md, .json or .csv path")
    require(plot is None or Path(plot).suffix == ".png", "plot", None if plot is None else str(plot), "a .png path")


def write_table(rows: list[RunSummary], path) -> Path:
    """``.md`` (the markdown table), ``.json`` (every field, curves included) or ``.csv``."""
    check_outputs(out=path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".md":
        path.write_text(markdown_table(rows) + "\n")
    elif path.suffix == ".json":
        path.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    else:  # .csv
        columns = (*COLUMNS, *STD_COLUMNS.values())
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for r in rows:
                d = asdict(r)
                writer.writerow(["" if d[c] is None else d[c] for c in columns])
    return path


MIN_SPAN = 20.0  # percentage points: the shortest y-axis of an accuracy plot (a 2-point gap stays a small one)


def honest_ylim(values, include_zero: bool = False, bounds: tuple[float, float] = (0.0, 100.0),
                min_span: float = MIN_SPAN) -> tuple[float, float]:
    """y-limits for percentages: the values (and 0 with ``include_zero``) with a margin, widened about their middle
    to at least ``min_span`` points and kept inside ``bounds``: a small difference is not drawn as a large one."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)] + ([0.0] if include_zero else [])
    if not vals:
        return bounds
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    if lo < bounds[0]:
        lo, hi = bounds[0], max(hi, bounds[0] + min_span)
    if hi > bounds[1]:
        lo, hi = min(lo, bounds[1] - min_span), bounds[1]
    return max(lo, bounds[0]), min(hi, bounds[1])


def plot_curves(rows: list[RunSummary], path) -> Path:
    """A PNG: test accuracy after each task, one line per run (error bars: std over the probe fits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_outputs(plot=path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rows and all(r.stream_curve for r in rows):  # streams: kNN accuracy against the step
        plot_stream({f"{r.run} ({r.method}+{r.regularizer})": list(r.stream_curve) for r in rows}, path, "knn")
        return path
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.errorbar(range(len(r.curve)), r.curve, yerr=r.curve_std or None, marker="o", capsize=3,
                    label=f"{r.run} ({r.method}+{r.regularizer})")
    longest = max((len(r.curve) for r in rows), default=0)
    ax.set_xticks(range(longest))
    ax.set_ylim(*honest_ylim([v for r in rows for v in r.curve]))
    ax.set_xlabel("after task")
    ax.set_ylabel(f"test accuracy (%), {rows[0].protocol if len(rows) else ''}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
