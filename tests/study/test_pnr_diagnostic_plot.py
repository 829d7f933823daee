"""The study report's plot of the pseudo-negative diagnostic: seed means of metrics.json train_epochs' diag_* keys."""
from __future__ import annotations

import json

import pytest

from fastpnr.study.report import diagnostic_curves, write_plots


def _cell(out, name, method, reg, seed, epochs, status="done"):
    (out / name).mkdir()
    (out / name / "metrics.json").write_text(json.dumps({"train_epochs": epochs}))
    return {"name": name, "preset": "smoke", "scenario": None, "method": method, "regularizer": reg, "seed": seed,
            "status": status}


def _epochs(offset):
    # task 0: the method's positive only; task 1 (two epochs): the PNR diagnostic
    return [{"task": 0, "epoch": 0, "loss": 1.0, "diag_positive": 0.5 + offset},
            {"task": 1, "epoch": 0, "loss": 1.0, "diag_positive": 0.6 + offset, "diag_frozen_positive": 0.4,
             "diag_pseudo_negatives": 0.1, "diag_gap": 0.2 + offset},
            {"task": 1, "epoch": 1, "loss": 1.0, "diag_positive": 0.7 + offset, "diag_frozen_positive": 0.6,
             "diag_pseudo_negatives": 0.1, "diag_gap": 0.1 + offset}]


def test_seed_means_per_epoch_task_starts_and_the_png(tmp_path):
    entries = [_cell(tmp_path, "simclr-pnr-s5", "simclr", "pnr", 5, _epochs(0.0)),
               _cell(tmp_path, "simclr-pnr-s6", "simclr", "pnr", 6, _epochs(0.2)),
               _cell(tmp_path, "simclr-pnr-s7", "simclr", "pnr", 7, _epochs(9.0), status="running"),  # not finished
               _cell(tmp_path, "simclr-finetune-s5", "simclr", "finetune", 5,
                     [{"task": t, "epoch": e, "loss": 1.0, "diag_positive": 0.9} for t, e in ((0, 0), (1, 0), (1, 1))]),
               _cell(tmp_path, "byol-finetune-s5", "byol", "finetune", 5, [{"task": 0, "epoch": 0, "loss": 1.0}])]
    curves, starts, seeds = diagnostic_curves(tmp_path, entries, "simclr", "pnr")
    assert seeds == 2 and starts == [0, 1]
    assert curves["diag_positive"] == pytest.approx([0.6, 0.7, 0.8])
    assert curves["diag_gap"][0] != curves["diag_gap"][0]  # task 0 has no gap: NaN, not 0
    assert curves["diag_gap"][1:] == pytest.approx([0.3, 0.2])
    assert "diag_pull" not in curves
    assert diagnostic_curves(tmp_path, entries, "byol", "finetune") == ({}, [], 0)  # nothing logged
    names = write_plots(tmp_path, entries)
    assert "pnr_diagnostic.png" in names and (tmp_path / "pnr_diagnostic.png").read_bytes()[:4] == b"\x89PNG"


def test_no_plot_without_a_pnr_cell_that_logged_it(tmp_path):
    entries = [_cell(tmp_path, "simclr-finetune-s5", "simclr", "finetune", 5,
                     [{"task": 0, "epoch": 0, "loss": 1.0, "diag_positive": 0.9}])]
    assert "pnr_diagnostic.png" not in write_plots(tmp_path, entries)
