"""What a task boundary keeps (issue 33 §3): the state a MoCo-PNR run carries from the end of task t to the first step
of task t + 1 — the distill predictor (untrained, as built, when task 1 starts; task 1's when task 2 starts), both
queues and their pointers, the online and momentum classifiers and the EMA networks — as the anchors, where each task
is a new process that loads the previous task's whole checkpoint (``main_continual.py``; the frozen model and the
optimizer are the only fresh parts, pinned by ``test_continual.py``)."""
from __future__ import annotations

import pytest
import torch

import fastpnr.train.continual as continual
from fastpnr.config import build_config
from tests.conftest import tiny_overrides

METHOD_KEPT = ("momentum_backbone.", "momentum_projector.", "classifier.", "momentum_classifier.", "queue", "queue_ptr")
REGULARIZER_KEPT = ("distill_predictor.", "frozen_queue", "frozen_queue_ptr")


def _snapshot(run) -> dict:
    return {"method": {k: v.detach().clone() for k, v in run.method.state_dict().items()},
            "regularizer": {k: v.detach().clone() for k, v in run.regularizer.state_dict().items()}}


def _kept(state: dict, part: str, prefixes) -> dict:
    return {k: v for k, v in state[part].items() if k == prefixes or k.startswith(prefixes)}


@pytest.fixture(scope="module")
def boundaries(data_root, tmp_path_factory):
    """({task: state when its first phase's trainer is ready}, {task: state when its training ended})."""
    start, end = {}, {}
    original_phase_trainer, original_finish = continual.phase_trainer, continual.ContinualRun._finish_task
    mp = pytest.MonkeyPatch()

    def phase_trainer(method, regularizer, task, *a, **k):
        trainer = original_phase_trainer(method, regularizer, task, *a, **k)
        start.setdefault(task, _snapshot(run))
        return trainer

    def finish_task(self, task, *a, **k):
        end[task] = _snapshot(self)
        return original_finish(self, task, *a, **k)

    mp.setattr(continual, "phase_trainer", phase_trainer)
    mp.setattr(continual.ContinualRun, "_finish_task", finish_task)
    # queue 48 = 3 batches of 16 and 32 keys per task: the pointers stand at 32, 16, 0 after tasks 0, 1, 2, so a
    # queue reset at a boundary (pointer 0) would show
    ov = tiny_overrides(data_root, method="mocov2plus", regularizer="pnr",
                        **{"method.queue_size": 48, "regularizer.distill_hidden": 32, "data.num_tasks": 5,
                           "train.max_tasks": 3, "eval.forward_transfer": False, "train.online_probe": "task"})
    run = continual.ContinualRun(build_config("smoke", ov), tmp_path_factory.mktemp("boundary"), log=lambda *a, **k: None)
    try:
        run.fit()
    finally:
        mp.undo()
    assert sorted(start) == sorted(end) == [0, 1, 2]
    return start, end


@pytest.mark.parametrize("part,prefixes", [("method", METHOD_KEPT), ("regularizer", REGULARIZER_KEPT)])
def test_the_next_task_starts_from_the_previous_tasks_state(boundaries, part, prefixes):
    start, end = boundaries
    for t in (0, 1):
        before, after = _kept(end[t], part, prefixes), _kept(start[t + 1], part, prefixes)
        assert before.keys() == after.keys() and before
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert not changed, (t, changed)


def test_the_kept_state_is_trained_state_not_a_fresh_one(boundaries):
    start, end = boundaries
    m0, m1, m2 = (start[t]["method"] for t in (0, 1, 2))
    # the pointers move on (a fresh queue would start at 0 again)
    assert [int(s["method"]["queue_ptr"]) for s in (start[1], start[2])] == [32, 16]
    assert [int(s["regularizer"]["frozen_queue_ptr"]) for s in (start[1], start[2])] == [0, 32]  # fills from task 1
    for prefix in ("momentum_backbone.", "classifier.", "momentum_classifier."):
        keys = [k for k in m0 if k.startswith(prefix) and m0[k].is_floating_point()]
        assert keys and any(not torch.equal(m0[k], m1[k]) for k in keys), prefix  # task 0 trained them
        assert any(not torch.equal(m1[k], m2[k]) for k in keys), prefix          # and task 1 again
    # the EMA networks are not re-copied from the online ones at a boundary
    ema = {k[len("momentum_backbone."):]: v for k, v in m1.items() if k.startswith("momentum_backbone.")}
    assert any(not torch.equal(v, m1[f"backbone.{k}"]) for k, v in ema.items() if v.is_floating_point())


def test_the_distill_predictor_is_untrained_at_task_1_and_kept_after(boundaries):
    start, end = boundaries
    as_built = _kept(start[0], "regularizer", "distill_predictor.")  # task 0's start: the predictor as built
    at_task1 = _kept(start[1], "regularizer", "distill_predictor.")
    assert all(torch.equal(as_built[k], at_task1[k]) for k in as_built)  # task 0 has no frozen model: untouched
    after_task1 = _kept(end[1], "regularizer", "distill_predictor.")
    weights = [k for k in at_task1 if k.endswith("weight")]
    assert any(not torch.equal(at_task1[k], after_task1[k]) for k in weights)  # task 1 trains it
    at_task2 = _kept(start[2], "regularizer", "distill_predictor.")
    assert all(torch.equal(after_task1[k], at_task2[k]) for k in after_task1)  # and task 2 keeps it
