"""Stopping `fastpnr train` from outside, in a real process: Ctrl-C (SIGINT) once stops at the next step boundary
with a checkpoint; twice, at once; SIGTERM during a task's last step stops before the task's evaluation. Each stop
says so, with the resume command and no traceback, and the resumed run ends as the uninterrupted one."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fastpnr.system import preempt
from tests.conftest import tiny_overrides

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
SLOW_STEP = (str(HERE / "slow_step.py"),)
SIGNAL_AT_STEP = (str(ROOT / "tests" / "study" / "signal_at_step.py"),)
MAIN = "-m", "fastpnr"  # `python -m fastpnr`

pytestmark = pytest.mark.slow


def _args(data_root, out: Path) -> list[str]:
    ov = tiny_overrides(data_root, **{"train.threads": 1})
    return ["train", "--preset", "smoke", "--out", str(out)] + [a for k, v in ov.items() for a in (f"--{k}", str(v))]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


class _Run:
    """A train process whose stdout and stderr lines are read as they come."""

    def __init__(self, script: tuple[str, ...], args: list[str], **env):
        self.proc = subprocess.Popen([sys.executable, *script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_env(**env), cwd=ROOT)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, None), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True).start()

    def _read(self, stream, keep):
        for line in stream:
            self.lines.put(line.rstrip("\n"))
            if keep is not None:
                keep.append(line)

    def wait_for_line(self, text: str, timeout: float) -> float:
        """Seconds until a line containing ``text`` came (fails after ``timeout``)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return time.monotonic() - t0
        pytest.fail(f"no line with {text!r} within {timeout} s; seen: {self.seen[-20:]}")

    def wait_for_file(self, path: Path, timeout: float = 600) -> None:
        t0 = time.monotonic()
        while not path.exists():
            assert self.proc.poll() is None, f"the run ended ({self.proc.returncode}): {''.join(self.stderr)[-2000:]}"
            assert time.monotonic() - t0 < timeout, f"{path} never appeared"
            time.sleep(0.1)

    def finish(self, timeout: float = 600) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("the run did not end")
        time.sleep(0.2)  # the reader threads drain the pipes
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return rc


def _train(script, args, **env) -> tuple[int, _Run]:
    run = _Run(script, args, **env)
    return run.finish(), run


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    rc, run = _train(MAIN, _args(data_root, out))
    assert rc == 0, "".join(run.stderr)[-3000:]
    return out


def _resume_equals(out: Path, uninterrupted: Path) -> None:
    rc, run = _train(MAIN, ["train", "--resume", str(out)])
    assert rc == 0, "".join(run.stderr)[-3000:]
    resumed, full = (json.loads((p / "metrics.json").read_text()) for p in (out, uninterrupted))
    assert resumed["matrices"] == full["matrices"]
    a = torch.load(out / "task1.pt", weights_only=False)["method"]
    b = torch.load(uninterrupted / "task1.pt", weights_only=False)["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _ctrl_c_inside_a_slow_step(data_root, out: Path, step_s: int) -> _Run:
    """A run whose first step takes ``step_s`` s more, in one C call; Ctrl-C inside it, said to stop at once."""
    run = _Run(SLOW_STEP, _args(data_root, out), SLOW_STEP="1", SLOW_STEP_S=str(step_s))
    run.wait_for_file(out / "slow_step.started")
    run.proc.send_signal(signal.SIGINT)
    run.wait_for_line(preempt.STOPPING, timeout=15)
    assert not (out / "slow_step.done").exists()  # said while the step still ran
    return run


def _no_traceback(run: _Run) -> None:
    stderr = "".join(run.stderr)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]


def test_ctrl_c_says_so_at_once_and_stops_at_the_step_boundary_with_a_checkpoint(data_root, tmp_path, uninterrupted):
    out = tmp_path / "run"
    run = _ctrl_c_inside_a_slow_step(data_root, out, 20)
    assert run.finish() == preempt.EXIT_CHECKPOINTED
    _no_traceback(run)
    assert f"stopped by SIGINT: checkpoint at task 0 (1/2) epoch 1/1, after step 1; resume with --resume {out}" \
        in run.seen
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (ckpt["next_task"], ckpt["next_epoch"], ckpt["next_step"], ckpt["phase"]) == (0, 0, 1, "train")
    _resume_equals(out, uninterrupted)


def test_a_second_ctrl_c_stops_at_once_with_the_resume_line(data_root, tmp_path, uninterrupted):
    out = tmp_path / "run"
    run = _ctrl_c_inside_a_slow_step(data_root, out, 600)
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    assert run.finish(timeout=30) == preempt.EXIT_INTERRUPTED and time.monotonic() - t0 < 30
    _no_traceback(run)
    assert ("stopped at once by a second Ctrl-C: checkpoint at task 0 (1/2) epoch 1/1; resume with --resume "
            f"{out}") in run.seen
    _resume_equals(out, uninterrupted)


def test_sigterm_during_a_tasks_last_step_stops_before_its_evaluation(data_root, tmp_path, uninterrupted):
    out = tmp_path / "run"
    rc, run = _train(SIGNAL_AT_STEP, _args(data_root, out), SIGNAL_AT_STEP="2")  # task 0: 1 epoch of 2 steps
    assert rc == preempt.EXIT_CHECKPOINTED, "".join(run.stderr)[-3000:]
    _no_traceback(run)
    assert f"stopped by SIGTERM: checkpoint at task 0 (1/2), its evaluation; resume with --resume {out}" in run.seen
    assert not any("after task 0" in line for line in run.seen) and not (out / "task0.pt").exists()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (ckpt["next_task"], ckpt["phase"]) == (0, "evaluate")
    _resume_equals(out, uninterrupted)
