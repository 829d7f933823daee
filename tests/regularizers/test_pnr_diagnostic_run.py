"""The pseudo-negative diagnostic in a run: logged per log step and per epoch, and the run's numbers unchanged by it
(the same two-task run with the diagnostic switched off gives the same weights and accuracies, bit for bit)."""
from __future__ import annotations

import json

import pytest
import torch

from fastpnr.config import build_config
from fastpnr.train.continual import ContinualRun
from tests.conftest import tiny_overrides

CONTRASTIVE_KEYS = {"diag_positive", "diag_frozen_positive", "diag_pseudo_negatives", "diag_gap"}
# where each method's diagnostic is computed: (module, function) pairs switched off for the reference run
SOURCES = {"simclr": [("fastpnr.regularizers.pnr", "pnr_simclr_logits"), ("fastpnr.methods.simclr", "positive_logit")],
           "mocov2plus": [("fastpnr.regularizers.pnr", "pnr_moco_logits"),
                          ("fastpnr.methods.mocov2plus", "positive_logit")],
           "byol": [("fastpnr.regularizers.pnr", "pull_push")]}
EXTRA = {"simclr": {}, "mocov2plus": {"method.queue_size": 64}, "byol": {"method.pred_hidden": 32}}


def _run(data_root, out, method):
    ov = tiny_overrides(data_root, method=method, regularizer="pnr",
                        **{"regularizer.distill_hidden": 32, "eval.forward_transfer": False, **EXTRA[method]})
    metrics = ContinualRun(build_config("smoke", ov), out, log=lambda *a, **k: None).fit()
    # the process's RNG after the run: the diagnostic draws no random number (the loaders' own generators would
    # hide a draw from the weights)
    metrics["rng_after_run"] = torch.get_rng_state()
    return metrics, torch.load(out / "checkpoint.pt", weights_only=False)


@pytest.mark.parametrize("method", ["simclr", "mocov2plus", "byol"])
def test_the_diagnostic_is_logged_and_changes_no_number_of_the_run(data_root, tmp_path, monkeypatch, method):
    with_diag, ckpt = _run(data_root, tmp_path / "with", method)
    epochs = with_diag["train_epochs"]
    task1 = [e for e in epochs if e["task"] == 1]
    assert task1
    if method == "byol":
        for e in task1:
            assert {"diag_pull", "diag_push"} <= set(e)
            assert e["pnr"] == pytest.approx(e["diag_pull"] - e["diag_push"], rel=1e-5, abs=1e-6)
    else:
        for e in task1:
            assert CONTRASTIVE_KEYS <= set(e)
            assert all(-1 - 1e-5 <= e[k] <= 1 + 1e-5 for k in CONTRASTIVE_KEYS - {"diag_gap"})
            # an epoch mean of per-step gaps is the gap of the epoch means
            assert e["diag_gap"] == pytest.approx(e["diag_positive"] - e["diag_frozen_positive"], abs=1e-6)
        # task 0 (no frozen model yet) logs the method's own positive only
        assert all("diag_positive" in e and "diag_frozen_positive" not in e for e in epochs if e["task"] == 0)
    assert json.loads((tmp_path / "with" / "metrics.json").read_text())["train_epochs"] == epochs

    for module, name in SOURCES[method]:
        monkeypatch.setattr(f"{module}.{name}", lambda *a, **k: {})
    without, ref = _run(data_root, tmp_path / "without", method)
    assert not any(k.startswith("diag_") for e in without["train_epochs"] for k in e)
    assert without["matrices"] == with_diag["matrices"]
    assert torch.equal(without["rng_after_run"], with_diag["rng_after_run"])
    for part in ("method", "regularizer"):
        assert ckpt[part].keys() == ref[part].keys()
        assert all(torch.equal(ckpt[part][k], ref[part][k]) for k in ckpt[part]), part
    # the loss terms the two runs logged are the same numbers
    for a, b in zip(epochs, without["train_epochs"]):
        assert {k: v for k, v in a.items() if not k.startswith("diag_")} == b


def test_the_diagnostic_goes_to_tensorboard_at_every_log_step(data_root, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tests.run.test_run_folder import _events

    _run(data_root, tmp_path, "simclr")
    events = _events(tmp_path / "tb")
    # log_every 1, 2 steps per task: task 0 logs the positive only, task 1 (steps 3, 4) all four
    assert sorted(s for t, s in events if t == "train/diag_positive") == [1, 2, 3, 4]
    for key in CONTRASTIVE_KEYS - {"diag_positive"}:
        assert sorted(s for t, s in events if t == f"train/{key}") == [3, 4]
