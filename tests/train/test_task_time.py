"""A task's training time counts every attempt: a run killed mid-task and resumed records the time trained before the
kill (kept in the checkpoint) plus the resumed part, and each attempt's share (``task_time_s_by_attempt``)."""
from __future__ import annotations

import json
import time

import pytest

from fastpnr.config import build_config
from fastpnr.train.continual import ContinualRun, resume_run
from fastpnr.train.trainer import Trainer
from tests.data.utils import two_class_folder_overrides

EPOCHS = 3


def quiet(*_a, **_k):
    pass


@pytest.fixture
def epoch_seconds(monkeypatch):
    """The wall time of every Trainer.train_epoch call, in order (a lower bound of what the loop must count)."""
    seconds = []
    real = Trainer.train_epoch

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)
    monkeypatch.setattr(Trainer, "train_epoch", timed)
    return seconds


def _overrides(tmp_path):
    return two_class_folder_overrides(tmp_path, **{"optim.epochs": EPOCHS, "model.width": 16, "train.threads": 1})


def test_a_resumed_task_counts_the_time_of_both_attempts(tmp_path, epoch_seconds):
    out, ov = tmp_path / "run", _overrides(tmp_path)
    ContinualRun(build_config("smoke", ov), out, log=quiet).fit(stop_after_epochs=2)  # in task 0
    first = list(epoch_seconds)
    assert len(first) == 2
    epoch_seconds.clear()
    metrics = resume_run(out, log=quiet)
    second = list(epoch_seconds)
    assert len(second) == 1 + EPOCHS  # the rest of task 0, then task 1

    by_attempt = metrics["task_time_s_by_attempt"]
    assert [len(a) for a in by_attempt] == [2, 1]  # task 0 trained in two processes, task 1 in one
    assert by_attempt[0][0] >= sum(first) and by_attempt[0][1] >= second[0] and by_attempt[1][0] >= sum(second[1:])
    assert metrics["task_time_s"] == pytest.approx([sum(a) for a in by_attempt], rel=1e-12)
    assert metrics["task_time_s"][0] >= sum(first) + second[0]
    # img/s: every image task 0 trained on (both attempts) over its whole training time
    n, batch = json.loads((out / "tasks.json").read_text())["tasks"][0]["train_images_used"], ov["optim.batch_size"]
    images = min(n // batch, ov["train.steps_per_epoch"]) * batch * EPOCHS
    assert metrics["images_per_second"][0] * metrics["task_time_s"][0] == pytest.approx(images, rel=1e-9)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["task_time_s_by_attempt"] == by_attempt and on_disk["task_time_s"] == metrics["task_time_s"]


def test_a_kill_during_the_evaluation_keeps_one_attempt_of_training(tmp_path, epoch_seconds):
    out = tmp_path / "run"
    ContinualRun(build_config("smoke", _overrides(tmp_path)), out, log=quiet).fit(stop_before_eval=0)
    first = list(epoch_seconds)
    metrics = resume_run(out, log=quiet)  # resumes into task 0's evaluation: no training of task 0 in it
    assert [len(a) for a in metrics["task_time_s_by_attempt"]] == [1, 1]
    assert metrics["task_time_s_by_attempt"][0][0] >= sum(first)
