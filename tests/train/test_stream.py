"""The stream scenario end to end on real CIFAR-10 (CPU): the curve, every strategy, boundaries, exact resume."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastpnr.config import build_config
from fastpnr.errors import ConfigError
from fastpnr.train.continual import ContinualRun, resume_run
from tests.conftest import tiny_overrides

# 4 class-ordered chunks of 50 images (0.004 of 12,500), batch 16: 3 steps each, 12 steps; kNN every 4 steps
STREAM = {"data.scenario": "stream", "data.num_tasks": 4, "eval.every_steps": 4, "eval.protocol": "knn",
          "train.online_probe": "off", "optim.epochs": 1, "optim.warmup_epochs": 0, "train.steps_per_epoch": None,
          "eval.linear_seeds": 1, "eval.forward_transfer": False}
EXTRA = {"cassle": {"regularizer.distill_hidden": 32, "regularizer.refresh_every": 5},
         "pnr": {"regularizer.distill_hidden": 32, "regularizer.refresh_every": 5},
         "pfr": {"regularizer.refresh_every": 5}, "er": {"regularizer.buffer_size": 16},
         "lump": {"regularizer.buffer_size": 16}, "cla_e": {"regularizer.distill_hidden": 32},
         "cla_r": {"regularizer.distill_hidden": 32, "regularizer.buffer_size": 16, "regularizer.replay_batch": 8},
         "finetune": {}}


def quiet(*_a, **_k):
    pass


def stream_overrides(data_root, reg="finetune", **extra):
    return tiny_overrides(data_root, regularizer=reg, **{**STREAM, **EXTRA[reg], **extra})


def test_a_stream_is_one_task_with_the_curve_every_n_steps_and_at_the_end(data_root, tmp_path):
    run = ContinualRun(build_config("smoke", stream_overrides(data_root, **{"train.steps_per_epoch": 10,
                                                                          "eval.stream_linear": True})), tmp_path,
                       log=quiet)
    m = run.fit()
    stream = m["stream"]
    assert all(sorted(p["accuracy"]) == ["knn", "linear"] for p in stream["curve"])  # eval.stream_linear
    assert [p["step"] for p in stream["curve"]] == [4, 8, 10]  # every 4 steps, and the end (steps_per_epoch 10)
    assert stream["chunk_starts"] == [0, 3, 6, 9, 10]
    assert [(p["chunks_seen"], p["chunks_done"]) for p in stream["curve"]] == [(2, 1), (3, 2), (4, 4)]  # the cut stream ends chunk 3 at step 10
    for p in stream["curve"]:
        acc = p["accuracy"]["knn"]
        assert len(acc) == 4 and all(0 <= a <= 100 for a in acc)
        assert p["seen_average"]["knn"] == pytest.approx(np.mean(acc[:p["chunks_seen"]]))
    s = stream["summary"]["knn"]
    assert s["final_average_accuracy"] == pytest.approx(np.mean(stream["curve"][-1]["accuracy"]["knn"]))
    assert s["average_accuracy_over_stream"] == pytest.approx(np.mean([p["seen_average"]["knn"] for p in stream["curve"]]))
    assert len(m["accuracy_matrix"]) == 1 and len(m["accuracy_matrix"][0]) == 4
    assert m["average_incremental_accuracy"] == s["average_accuracy_over_stream"] and m["forgetting"] == s["forgetting"]
    assert (tmp_path / "stream_accuracy.png").stat().st_size > 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["stream"]["curve"] == stream["curve"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("stream/knn_seen_average")] == [4, 8, 10]


def test_the_stream_loader_yields_the_chunks_in_order_with_its_passes(data_root, tmp_path):
    """Every batch of chunk c comes before every batch of chunk c+1, each chunk's passes in a row; the stream's one
    epoch is every chunk's whole batches times optim.epochs."""
    from fastpnr.data.task_data import TaskData

    cfg = build_config("smoke", stream_overrides(data_root, **{"optim.epochs": 2}))
    data = TaskData(cfg, None, log=quiet)
    loader, _ = data.task_loaders(0, 2)
    loader.set_epoch(0)
    owner = {int(i): c for c, idx in enumerate(data.task_train) for i in idx}
    chunks = [owner[int(i)] for _, _, idx in loader for i in idx]
    assert chunks == sorted(chunks) and len(chunks) == len(loader) * 16 == 4 * 2 * 3 * 16
    assert data.stream_steps() == 24 and loader.chunk_of_step(5) == 0 and loader.chunk_of_step(6) == 1


def test_batch_passes_repeat_each_minibatch_and_multiply_the_stream(data_root, tmp_path):
    """data.batch_passes 3 (the CLA authors' --mb-passes 3): each minibatch three steps in a row, fresh views each; the
    stream's steps, chunk starts and evaluation points count them."""
    from fastpnr.data.task_data import TaskData

    cfg = build_config("smoke", stream_overrides(data_root, **{"data.batch_passes": 3}))
    data = TaskData(cfg, None, log=quiet)
    loader, _ = data.task_loaders(0, 2)
    loader.set_epoch(0)
    batches = [(v[0], idx) for v, _, idx in loader]
    assert len(batches) == len(loader) == data.stream_steps() == 4 * 3 * 3
    for b in range(0, len(batches), 3):
        (v0, i0), (v1, i1), (v2, i2) = batches[b:b + 3]
        assert torch.equal(i0, i1) and torch.equal(i1, i2) and not torch.equal(v0, v1) and not torch.equal(v1, v2)
    assert not torch.equal(batches[2][1], batches[3][1]) and loader.chunk_of_step(8) == 0 and loader.chunk_of_step(9) == 1
    run = ContinualRun(build_config("smoke", stream_overrides(data_root, "cla_r", **{"data.batch_passes": 3,
                                                                                  "eval.every_steps": 12})),
                       tmp_path, log=quiet)
    m = run.fit()
    assert m["stream"]["chunk_starts"] == [0, 9, 18, 27, 36] and [p["step"] for p in m["stream"]["curve"]] == [12, 24, 36]
    assert run.regularizer.replay_buffer.seen_host == 12 * 16  # each of the 12 minibatches entered once


@pytest.mark.parametrize("reg", ["cla_e", "cla_r", "pnr", "cassle", "pfr", "er", "lump"])
def test_every_strategy_runs_a_stream_without_boundaries(data_root, tmp_path, reg):
    run = ContinualRun(build_config("smoke", stream_overrides(data_root, reg)), tmp_path, log=quiet)
    m = run.fit()
    assert len(m["stream"]["curve"]) == 3 and int(run.regularizer.task) == 0  # no begin_task after the start
    r = run.regularizer
    if reg in ("pnr", "cassle", "pfr"):  # refreshed at step 10 (refresh_every 5): the model after step 10
        online = dict(run.method.backbone.named_parameters())
        diff = sum((p - online[n]).abs().sum().item() for n, p in r.frozen.backbone.named_parameters())
        assert r.active and diff > 0
    if reg == "cla_e":  # the EMA differs from the online model and from the initial one
        assert r.active
        online = dict(run.method.backbone.named_parameters())
        assert all(not torch.equal(p, online[n]) for n, p in r.frozen.backbone.named_parameters() if p.dim() > 1)
    if reg == "cla_r":  # every buffered image holds a stored projection
        buf = r.replay_buffer
        assert buf.filled() == 16 and r.active and buf.features.abs().sum(1).gt(0).all()


def test_known_boundaries_call_begin_task_at_each_chunk_start(data_root, tmp_path):
    run = ContinualRun(build_config("smoke", stream_overrides(data_root, "pnr", **{"regularizer.refresh_every": None,
                                                                                  "train.boundaries": "known"})),
                       tmp_path, log=quiet)
    calls = []
    from fastpnr.regularizers.pnr import PNR

    original = PNR.begin_task

    def spy(self, method, task):
        calls.append(task)
        return original(self, method, task)

    PNR.begin_task = spy
    try:
        run.fit()
    finally:
        PNR.begin_task = original
    assert calls == [0, 1, 2, 3] and run.regularizer.active


# CLA-R as the authors' command line runs it: the views' mean stored, refreshed half way at each replay
CLA_R_AUTHORS = {"regularizer.stored_projection": "mean", "regularizer.stored_refresh": 0.5,
                 "regularizer.align_criterion": "cosine"}
PASSES = {"data.batch_passes": 2, "eval.every_steps": 3}  # 24 steps; evaluated (and checkpointed) every 3


@pytest.mark.slow
@pytest.mark.parametrize("reg, extra", [("finetune", {}), ("cla_r", {}), ("cla_r", CLA_R_AUTHORS), ("cla_e", {}),
                                        ("pnr", {}), ("cla_r", {**CLA_R_AUTHORS, **PASSES})])
def test_a_stream_killed_mid_way_resumes_to_the_same_weights_and_curve(data_root, tmp_path, reg, extra):
    ov = stream_overrides(data_root, reg, **extra)
    full = ContinualRun(build_config("smoke", ov), tmp_path / "full", log=quiet).fit()
    if "regularizer.stored_refresh" in extra:  # the refresh reaches the run through the loader: without it (alpha 1) other weights
        never = {**extra, "regularizer.stored_refresh": 1.0}
        ContinualRun(build_config("smoke", stream_overrides(data_root, reg, **never)), tmp_path / "never", log=quiet).fit()
        a, b = (torch.load(tmp_path / f / "task0.pt", weights_only=False)["method"] for f in ("full", "never"))
        assert any(not torch.equal(a[k], b[k]) for k in a)
    out = tmp_path / "killed"
    killed = ContinualRun(build_config("smoke", ov), out, log=quiet)
    # cla_r: replay began (16 images at step 1); PASSES: step 9 is minibatch 4's first pass, the second is resumed
    killed.stop_stream_after_step = 9 if PASSES.items() <= extra.items() else 4 if reg != "cla_r" else 8
    killed.fit()
    assert not (out / "task0.pt").exists()
    resumed = resume_run(out, log=quiet)
    assert resumed["stream"]["curve"] == full["stream"]["curve"]
    a = torch.load(tmp_path / "full" / "task0.pt", weights_only=False)["method"]
    b = torch.load(out / "task0.pt", weights_only=False)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("override,message", [
    ({"eval.every_steps": 13}, "eval.every_steps=13 is invalid; allowed: <= the stream's 12 steps"),
    ({"regularizer": "pnr", "regularizer.refresh_every": 0}, "regularizer.refresh_every=0 is invalid"),
    ({"regularizer": "pnr", "regularizer.refresh_every": None}, "regularizer.refresh_every=None is invalid for pnr"),
    ({"regularizer": "cla_e", "regularizer.ema_momentum": 1.0}, "regularizer.ema_momentum=1.0 is invalid; allowed: 0 <"),
    ({"regularizer": "cla_e", "regularizer.ema_momentum": 0}, "regularizer.ema_momentum=0.0 is invalid"),
    ({"regularizer": "er", "regularizer.buffer_size": 500}, "regularizer.buffer_size=500 is invalid; allowed: <= 192"),
    ({"regularizer": "cla_r", "regularizer.stored_refresh": 1.5}, "regularizer.stored_refresh=1.5 is invalid; allowed: 0 <"),
    ({"regularizer": "cla_r", "regularizer.stored_projection": "last"}, "regularizer.stored_projection='last' is invalid"),
    ({"regularizer": "cla_e", "regularizer.align_criterion": "l2"}, "regularizer.align_criterion='l2' is invalid"),
    ({"data.batch_passes": 0}, "data.batch_passes=0 is invalid; allowed: an integer >= 1"),
    ({"data.scenario": "class", "data.batch_passes": 2}, "data.batch_passes=2 is invalid; allowed: 1 unless data.scenario is stream"),
])
def test_bad_stream_input_is_one_line_naming_the_value(data_root, tmp_path, override, message):
    override = dict(override)
    reg = override.pop("regularizer", "finetune")
    with pytest.raises(ConfigError) as err:
        ContinualRun(build_config("smoke", stream_overrides(data_root, reg, **override)), tmp_path, log=quiet).fit()
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("reg, extra", [("cla_r", {}), ("cla_r", CLA_R_AUTHORS), ("cla_e", {}),
                                        ("cla_r", {**CLA_R_AUTHORS, "data.batch_passes": 2})])
def test_two_ranks_run_the_stream_as_one_process(data_root, tmp_path, reg, extra):
    """float64 (see tests/system/test_distributed.py::equivalence_overrides): the same step losses, final weights and
    stream curve from 2 gloo ranks as from one process (CLA-R's refresh: each rank's replayed rows gathered)."""
    # the ranks run tests/system/test_distributed.py::_train (a module that does not import conftest at import)
    from tests.system.test_distributed import TB_LOSS_RTOL, WEIGHT_TOL, _train, errors, run_ranks, step_losses

    ov = stream_overrides(data_root, reg, **extra, **{"train.precision": "fp64", "train.deterministic": True,
                                             "train.device": "cpu", "train.threads": 1, "optim.lr": 0.0001})
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_ranks(1, _train, ov, str(one), report_dir=tmp_path) == [0], errors(tmp_path)
    assert run_ranks(2, _train, ov, str(two), report_dir=tmp_path) == [0, 0], errors(tmp_path)
    for term in ("loss", "cla"):
        la, lb = step_losses(one, term), step_losses(two, term)
        assert len(la) == len(lb) >= (12 if term == "loss" else 4)
        np.testing.assert_allclose(lb, la, rtol=TB_LOSS_RTOL, atol=0, err_msg=term)
    wa, wb = (torch.load(r / "task0.pt", weights_only=False)["method"] for r in (one, two))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], **WEIGHT_TOL)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert ma["stream"]["curve"] == mb["stream"]["curve"] and mb["world_size"] == [2]


@pytest.mark.slow
def test_a_stream_stopped_by_a_signal_between_evaluation_points_resumes_exactly(data_root, tmp_path, monkeypatch):
    """SIGTERM during step 6 (evaluations at 4, 8, 12): the checkpoint after step 6, then --resume gives the
    uninterrupted run's weights and curve (CLA-R: its buffer, stored projections and per-step replay draws)."""
    import os
    import signal

    from fastpnr.system import preempt
    from fastpnr.train import trainer

    ov = stream_overrides(data_root, "cla_r")
    full = ContinualRun(build_config("smoke", ov), tmp_path / "full", log=quiet).fit()
    run_step, calls = trainer.Trainer.run_step, [0]

    def signal_at_step_6(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return run_step(self, *args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "run_step", signal_at_step_6)
    out = tmp_path / "stopped"
    with pytest.raises(preempt.CheckpointedOnSignal):
        ContinualRun(build_config("smoke", ov), out, log=quiet).fit()
    assert torch.load(out / "checkpoint.pt", weights_only=False)["next_step"] == 6
    monkeypatch.setattr(trainer.Trainer, "run_step", run_step)
    resumed = resume_run(out, log=quiet)
    assert resumed["stream"]["curve"] == full["stream"]["curve"]
    a = torch.load(tmp_path / "full" / "task0.pt", weights_only=False)["method"]
    b = torch.load(out / "task0.pt", weights_only=False)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)
