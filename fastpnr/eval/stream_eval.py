"""Evaluation along a stream (``data.scenario stream``): the accuracy curve and its summaries.

Every ``eval.every_steps`` steps and at the stream's end the loop evaluates the backbone (kNN; the linear probe too
with ``eval.stream_linear``) on the test images of every chunk (``TaskData.test_parts``). ``metrics["stream"]``:

- ``curve``: one point per evaluation: ``step`` (steps trained), ``chunks_seen`` (chunks whose first step is
  trained), ``chunks_done`` (chunks whose last step is trained), and per protocol its accuracy on every chunk
  (``accuracy[protocol]``, percent), the mean over the chunks seen (``seen_average``) and over all (``average``);
- per protocol: ``final_average_accuracy`` (A_T: the last point's mean over all chunks, all seen at the end),
  ``average_accuracy_over_stream`` (the mean over the points of ``seen_average``: the online papers' "average
  accuracy"), ``forgetting`` (mean over the chunks j but the last of max over the points after chunk j was done of
  a_j, minus a_j at the end; 0 with one chunk).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import evaluation as ev
from fastpnr.system.atomic import atomic_file


def new_stream_metrics(chunk_starts, every_steps: int) -> dict:
    """The empty record of a stream: its chunks' first steps and the evaluation interval."""
    return {"every_steps": int(every_steps), "chunk_starts": [int(s) for s in chunk_starts], "curve": [],
            "summary": {}}


def chunks_progress(step: int, chunk_starts) -> tuple[int, int]:
    """(chunks seen, chunks done) after ``step`` steps; ``chunk_starts``: each chunk's first step, then the total."""
    starts = np.asarray(chunk_starts)
    seen = int(np.sum(starts[:-1] < step))
    done = int(np.sum(starts[1:] <= step))
    return seen, done


def record_point(stream: dict, step: int, rows: dict) -> dict:
    """Append the evaluation after ``step`` steps (``Evaluator.rows``: per protocol its fits) to ``stream``; refresh
    the summaries; return the point."""
    seen, done = chunks_progress(step, stream["chunk_starts"])
    point = {"step": int(step), "chunks_seen": seen, "chunks_done": done, "accuracy": {}, "seen_average": {},
             "average": {}}
    for name, fits in rows.items():
        row = ev.summarize_fits(fits)["row"]
        point["accuracy"][name] = [float(a) for a in row]
        point["seen_average"][name] = float(np.mean(row[:max(seen, 1)]))
        point["average"][name] = float(np.mean(row))
    if stream["curve"] and stream["curve"][-1]["step"] == step:  # the end fell on an evaluation point
        stream["curve"][-1] = point
    else:
        stream["curve"].append(point)
    stream["summary"] = {name: summarize(stream["curve"], name) for name in rows}
    return point


def summarize(curve: list, protocol: str) -> dict:
    """A_T, the average accuracy over the stream and the forgetting at its end (module docstring), of ``protocol``."""
    last = curve[-1]
    final = last["accuracy"][protocol]
    drops = []
    for j in range(len(final) - 1):
        after = [p["accuracy"][protocol][j] for p in curve if p["chunks_done"] > j]
        if after and last["chunks_done"] > j + 1:
            drops.append(max(after) - final[j])
    return {"final_average_accuracy": float(np.mean(final)),
            "average_accuracy_over_stream": float(np.mean([p["seen_average"][protocol] for p in curve])),
            "forgetting": float(np.mean(drops)) if drops else 0.0}


def point_line(point: dict, protocol: str) -> str:
    """The log line of an evaluation point."""
    return (f"step {point['step']} (chunks seen {point['chunks_seen']}): {protocol} seen-chunk average "
            f"{point['seen_average'][protocol]:.2f}%, all chunks {point['average'][protocol]:.2f}%")


def plot_stream(curves: dict, path: Path, protocol: str, chunk_starts=None, title: str = "") -> None:
    """PNG of accuracy over the stream: per run (``curves``: label -> curve) the seen-chunk average and the average
    over all chunks against the step; dotted lines at the chunk starts of the first run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for (label, curve), color in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
        steps = [p["step"] for p in curve]
        ax.plot(steps, [p["seen_average"][protocol] for p in curve], color=color, label=f"{label} (chunks seen)")
        ax.plot(steps, [p["average"][protocol] for p in curve], color=color, linestyle="--", label=f"{label} (all)")
    for s in (chunk_starts or [])[1:-1]:
        ax.axvline(s, color="0.85", linewidth=0.5, zorder=0)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{protocol} accuracy (%)")
    ax.set_title(title or f"{protocol} accuracy over the stream")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)


def stream_figures(m: dict, protocol: str) -> dict | None:
    """A stream run's (``metrics["stream"]``) summary figures of its final row in ``protocol`` and its kNN curve, as
    the task-based ones are named (``final_avg_acc``: the mean over all chunks; ``avg_inc_acc``: the average accuracy
    over the stream; ``forgetting``); None for a task-based run."""
    stream, matrix = m.get("stream"), m.get("matrices", {}).get(protocol)
    if not stream or not stream.get("summary") or not matrix:
        return None
    knn = stream["summary"]["knn"]
    return {"final_avg_acc": float(np.mean(matrix[-1])), "avg_inc_acc": knn["average_accuracy_over_stream"],
            "forgetting": knn["forgetting"]}


def mean_curve(curves: list[list]) -> list:
    """The point-wise mean over runs (seeds) of their curves' ``seen_average`` and ``average`` (every protocol), over
    the steps every run reached."""
    steps = sorted(set.intersection(*(set(p["step"] for p in c) for c in curves)))
    out = []
    for s in steps:
        points = [next(p for p in c if p["step"] == s) for c in curves]
        out.append({"step": s, **{key: {proto: float(np.mean([p[key][proto] for p in points]))
                                        for proto in points[0][key]} for key in ("seen_average", "average")}})
    return out


def plot_study_streams(out: Path, entries: list[dict], name: str = "stream_curves.png") -> str | None:
    """A study's stream runs (``out/<cell>/metrics.json`` with a curve): per method+strategy the kNN curve averaged
    over its seeds, in ``out/name``; the name, or None when no cell has a curve."""
    import json

    curves: dict[str, list] = {}
    starts = None
    for e in entries:
        path = Path(out) / e["name"] / "metrics.json"
        if not path.exists():
            continue
        stream = json.loads(path.read_text()).get("stream")
        if stream and stream.get("curve"):
            curves.setdefault(f"{e['method']}+{e['regularizer']}", []).append(stream["curve"])
            starts = starts or stream["chunk_starts"]
    if not curves:
        return None
    plot_stream({label: mean_curve(c) for label, c in curves.items()}, Path(out) / name, "knn", starts,
                title="kNN accuracy over the stream (mean over seeds)")
    return name
