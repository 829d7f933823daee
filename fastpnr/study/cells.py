"""What ``fastpnr.study.runner`` (the runner) and ``fastpnr.study.report`` (the report) both read: a study's cells, their
files and states on disk, the progress line, the checkout's commit. It imports neither, so the two do not import
each other."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

STUDY_FILE, CELL_FILE, LOG_FILE = "study.json", "cell.json", "train.log"
CHECKPOINT = "checkpoint.pt"        # continual.CHECKPOINT; not imported: running cells needs no torch here


# ------------------------------------------------------------------------------------------------ a cell
@dataclass(frozen=True)
class Cell:
    name: str
    preset: str
    method: str
    regularizer: str
    seed: int
    scenario: str | None = None     # None: the preset's
    backbone: str | None = None     # model.backbone; None: the preset's (or the shared option's)

    @property
    def key(self) -> tuple:
        return (self.preset, self.scenario, self.method, self.regularizer, self.seed, self.backbone)

    @property
    def step_groups(self) -> tuple[tuple, ...]:
        """The cells likely to train as many steps as this one, nearest first: the same data and strategy (a
        strategy may add epochs, POCON's phases) and method (batch size), then without the method, the data alone."""
        data = (self.preset, self.scenario)
        return (data + (self.regularizer, self.method), data + (self.regularizer,), data)

    def overrides(self, shared: dict) -> dict:
        ov = {**strategy_options(self.regularizer, shared), "method": self.method, "regularizer": self.regularizer,
              "seed": self.seed}
        ov = {**ov, "scenario": self.scenario} if self.scenario else ov
        return {**ov, "model.backbone": self.backbone} if self.backbone else ov

    def to_dict(self) -> dict:
        d = {"name": self.name, "preset": self.preset, "scenario": self.scenario, "method": self.method,
             "regularizer": self.regularizer, "seed": self.seed}
        return {**d, "backbone": self.backbone} if self.backbone else d


def regularizer_fields(regularizer: str) -> set[str]:
    from dataclasses import fields

    from fastpnr.regularizers import REGULARIZERS

    return {f.name for f in fields(REGULARIZERS[regularizer][1])}


def strategy_options(regularizer: str, shared: dict) -> dict:
    """The shared options less the ``regularizer.*`` fields this strategy lacks (fine-tuning has none), so that one
    command tunes PNR and CaSSLe beside fine-tuning. Method options stay strict: a wrong one fails its cells."""
    have = regularizer_fields(regularizer)
    return {k: v for k, v in shared.items() if not (k.startswith("regularizer.") and k.split(".", 1)[1] not in have)}


# ------------------------------------------------------------------------------------------------ cell state
@dataclass
class CellState:
    status: str                     # done | running | failed | interrupted | pending
    tasks_done: int = 0
    num_tasks: int | None = None
    record: dict = field(default_factory=dict)
    steps_by_task: tuple[int, ...] = ()   # each task's training steps (metrics.json); () until the run wrote them

    @property
    def steps(self) -> int | None:
        """The cell's training steps, None while not known."""
        return sum(self.steps_by_task) if self.steps_by_task else None

    @property
    def steps_done(self) -> int:
        """The steps of its finished tasks."""
        return sum(self.steps_by_task[:self.tasks_done])

    @property
    def wall_s(self) -> float:
        return sum(a.get("wall_s", 0.0) for a in self.record.get("attempts", []))

    @property
    def device_hours(self) -> float:
        return sum(a.get("wall_s", 0.0) * a.get("devices", 1) for a in self.record.get("attempts", [])) / 3600

    @property
    def device_kind(self) -> str:
        attempts = self.record.get("attempts", [])
        return attempts[-1].get("kind", "cpu") if attempts else "cpu"

    def running_for(self, now: float) -> float:
        attempts = self.record.get("attempts", [])
        return now - attempts[-1]["start"] if self.status == "running" and attempts else 0.0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tasks(folder: Path) -> tuple[int, int | None]:
    m = _read_json(folder / "metrics.json")
    if "stream" in m:  # a stream is the loop's one task (its chunks are the columns of its one matrix row)
        return len(m.get("accuracy_matrix", [])), 1
    num = m.get("num_tasks") or _read_json(folder / "config.json").get("data", {}).get("num_tasks")
    return len(m.get("accuracy_matrix", [])), num


def _train_steps(folder: Path) -> tuple[int, ...]:
    """Each task's training steps, as the run wrote them in metrics.json; () before that."""
    return tuple(int(s) for s in _read_json(folder / "metrics.json").get("train_steps_by_task", ()))


def _alive(record: dict) -> bool:
    """Whether the process that ``record`` says runs the cell still does (another host: assume so)."""
    pid = record.get("pid")
    if not pid:
        return False
    if record.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(folder: Path) -> CellState:
    record = _read_json(folder / CELL_FILE)
    done, num = _tasks(folder)
    if num and done >= num:
        status = "done"
    elif record.get("status") == "running" and _alive(record):
        status = "running"
    elif record.get("status") == "failed":
        status = "failed"
    elif (folder / CHECKPOINT).exists():
        status = "interrupted"
    else:
        status = "pending"
    return CellState(status, done, num, record, _train_steps(folder))


def error_line(folder: Path) -> str | None:
    """The last ``error: ...`` line of the cell's log (else its last line: a traceback's exception)."""
    try:
        lines = [ln.strip() for ln in (folder / LOG_FILE).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    errors = [ln for ln in lines if ln.startswith("error:")]
    return errors[-1] if errors else (lines[-1] if lines else None)


# ------------------------------------------------------------------------------------------------ progress
def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def eta_s(states: list[CellState], slots: int, now: float, cells: list[Cell] | None = None) -> float | None:
    """Seconds left: the training steps every cell still has to run, at the seconds per step the finished cells took
    (their wall time, start-up and evaluation included, over their steps), shared by the slots.

    A cell that has not written its step count yet (pending, or in its first task) counts the steps of its nearest
    sibling that has (``Cell.step_groups``; without ``cells``: the mean of the known ones). Without any finished
    cell whose steps are known (runs from before ``train_steps_by_task``) every cell counts as one unit: the mean
    wall time of the finished cells per cell."""
    measured = [s for s in states if s.status == "done" and s.wall_s > 0 and s.steps]
    done = [s for s in states if s.status == "done" and s.wall_s > 0]
    if not done:
        return None
    if measured:
        per_step = sum(s.wall_s for s in measured) / sum(s.steps for s in measured)
        steps = _step_estimates(states, cells)
    else:
        per_step, steps = sum(s.wall_s for s in done) / len(done), [1] * len(states)
    left = 0.0
    for s, n in zip(states, steps):
        if s.status == "running":
            left += max(n * per_step - s.wall_s - s.running_for(now), 0.0)
        elif s.status in ("pending", "interrupted"):
            left += (n - (s.steps_done if s.steps else 0)) * per_step
    return left / max(slots, 1)


def _step_estimates(states: list[CellState], cells: list[Cell] | None) -> list[float]:
    """Each cell's training steps: its own when known, else its nearest sibling's mean (see ``eta_s``)."""
    known = [s.steps for s in states if s.steps]
    overall = sum(known) / len(known)
    by_group: dict[tuple, list[int]] = {}
    for i, s in enumerate(states):
        if s.steps and cells is not None:
            for g in cells[i].step_groups:
                by_group.setdefault(g, []).append(s.steps)
    estimates = []
    for i, s in enumerate(states):
        near = [by_group[g] for g in (cells[i].step_groups if cells is not None else ()) if g in by_group]
        estimates.append(s.steps or (sum(near[0]) / len(near[0]) if near else overall))
    return estimates


def progress_line(states: list[CellState], slots: int, elapsed: float, now: float,
                  cells: list[Cell] | None = None) -> str:
    count = lambda *names: sum(s.status in names for s in states)
    return (f"[study] {count('done')}/{len(states)} done, {count('running')} running, {count('failed')} failed, "
            f"{count('pending', 'interrupted')} to run | {fmt_duration(elapsed)} elapsed | "
            f"ETA {fmt_duration(eta_s(states, slots, now, cells))}")


def git_commit() -> str | None:
    """The fastpnr checkout's commit (``-dirty`` with uncommitted changes); None outside a git checkout."""
    try:
        res = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None
