"""A real stream study (fastpnr study --preset stream): the grid of issue 35's rows runs and reports the stream's
figures (A_T over all chunks, the average accuracy and forgetting along the stream)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastpnr.cli import main as fastpnr
from tests.conftest import tiny_overrides
from tests.train.test_stream import STREAM


@pytest.mark.slow
def test_a_stream_study_of_finetune_er_cla_and_pnr_reports_the_stream_figures(data_root, tmp_path):
    ov = tiny_overrides(data_root, **{**STREAM, "model.width": 8, "regularizer.refresh_every": 5,
                                      "regularizer.distill_hidden": 32, "regularizer.buffer_size": 16})
    ov = {k: v for k, v in ov.items() if k not in ("train.progress", "train.log_every", "train.steps_per_epoch")}
    out = tmp_path / "s"
    regs = ["finetune", "er", "cla_e", "cla_r", "pnr"]
    fastpnr([str(a) for a in ["study", "--preset", "stream", "--methods", "simclr", "--regularizers", ",".join(regs),
                              "--seeds", 5, "--out", out, "--jobs", 2, *[a for k, v in ov.items() for a in (f"--{k}", v)]]])
    report = json.loads((out / "report.json").read_text())
    assert report["plots"] == ["stream_curves.png"] and (out / "stream_curves.png").stat().st_size > 0
    assert [(c["regularizer"], c["status"]) for c in report["cells"]] == [(r, "done") for r in regs]
    for cell in report["cells"]:
        m = json.loads((out / cell["name"] / "metrics.json").read_text())
        assert len(m["stream"]["curve"]) == 3
        assert cell["metrics"]["final_average_accuracy"] == pytest.approx(np.mean(m["accuracy_matrix"][-1]))
        assert cell["metrics"]["forgetting"] == pytest.approx(m["stream"]["summary"]["knn"]["forgetting"])


def _stream_run(root, name, rows):
    """A stream run folder: 3 chunks of 10 steps, kNN points at steps 10, 20, 30 (``rows``: accuracy per chunk)."""
    from fastpnr.eval.stream_eval import new_stream_metrics, record_point

    stream = new_stream_metrics([0, 10, 20, 30], 10)
    for step, row in zip((10, 20, 30), rows):
        record_point(stream, step, {"knn": [(row, float(np.mean(row)))]})
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"data": {"dataset": "cifar10", "scenario": "stream",
                                                             "num_tasks": 3}, "method": {"name": "simclr"},
                                                    "regularizer": {"name": name}}))
    (folder / "metrics.json").write_text(json.dumps({
        "protocol": "knn", "num_tasks": 3, "matrices": {"knn": [rows[-1]]}, "stream": stream,
        "test_accuracy_by_protocol": {"knn": [float(np.mean(rows[-1]))]}, "task_time_s": [60.0]}))
    return folder


def test_compare_reads_a_streams_figures_and_plots_its_curve(tmp_path):
    from fastpnr.study.compare import plot_curves, summarize

    a = _stream_run(tmp_path, "finetune", [[60.0, 10.0, 10.0], [40.0, 70.0, 10.0], [50.0, 30.0, 80.0]])
    b = _stream_run(tmp_path, "cla_e", [[50.0, 10.0, 10.0], [50.0, 60.0, 10.0], [50.0, 50.0, 70.0]])
    ra, rb = summarize(a), summarize(b)
    assert ra.final_avg_acc == pytest.approx(160 / 3) and ra.forgetting == pytest.approx(25.0)  # hand-worked
    assert ra.avg_inc_acc == pytest.approx((60 + 55 + 160 / 3) / 3)
    assert rb.forgetting == pytest.approx(5.0) and len(rb.stream_curve) == 3
    assert plot_curves([ra, rb], tmp_path / "c.png").stat().st_size > 0


def test_a_study_of_streams_plots_their_curves_and_no_task_figures(tmp_path):
    """A stream's one matrix row is not a task sequence: no A_k curve, 1 x chunks heatmap or one-point diagnostic."""
    from fastpnr.study.report import write_plots

    rows = [[40.0, 10.0, 10.0], [35.0, 45.0, 10.0], [30.0, 40.0, 50.0]]
    entries = []
    for reg in ("finetune", "pnr"):
        _stream_run(tmp_path, reg, rows)
        entries.append({"name": reg, "method": "simclr", "regularizer": reg, "preset": "stream", "scenario": None,
                        "seed": 5, "status": "done", "metrics": {"final_average_accuracy": 40.0},
                        "accuracy_after_task": [40.0], "forgetting_by_task": [0.0], "accuracy_matrix": rows[-1:]})
    assert write_plots(tmp_path, entries) == ["stream_curves.png"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["stream_curves.png"]
