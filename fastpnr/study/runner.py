"""``fastpnr study``: the paper's comparison grid (methods x strategies x seeds) in one resumable command.

Every cell is an ordinary run folder under the study folder, trained by its own ``python -m fastpnr train`` process
(torchrun with ``nproc_per_cell`` > 1), so a crash in one cell cannot take the others down. Study folder:

    study.json     the cells asked for so far (grids only add cells), the train options every cell shares
    study.lock     the pid of the study running in this folder
    <cell>/        <method>-<regularizer>-s<seed> (preset-/scenario- first when several are given): a run folder, plus
        train.log  the cell's stdout and stderr, every attempt appended
        cell.json  the study's record: status, pid, host, attempts (start, end, exit code, devices, command)
    report.md, report.json, *.png   (``fastpnr.study.report``), rewritten after every finished cell

A cell is *done* when its metrics.json has every task; *interrupted* when it has a checkpoint but is neither done,
running nor failed (it resumes with ``train --resume``); *failed* when its process exited with an error (rerun only
with ``retry_failed``); *pending* otherwise. Rerunning a study skips done cells, so it is idempotent.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from fastpnr.errors import ConfigError, FastPNRError, require
from fastpnr.system.atomic import write_json
from fastpnr.system.preempt import EXIT_CHECKPOINTED
from .cells import (CELL_FILE, CHECKPOINT, LOG_FILE, STUDY_FILE, Cell, CellState, _alive, _read_json, _tasks,
                    error_line, fmt_duration, git_commit, progress_line, read_state, regularizer_fields)

LOCK_FILE = "study.lock"
KEEP_ON_RESTART = (LOG_FILE, CELL_FILE)
POLL_S = 0.2
# Set per cell by the grid: a shared override of these would make every cell the same.
GRID_OPTIONS = {"method": "methods", "method.name": "methods", "regularizer": "regularizers",
                "regularizer.name": "regularizers", "seed": "seeds", "train.seed": "seeds", "preset": "preset",
                "out": "out", "resume": "out", "model.backbone": "backbones"}
# Shared options a rerun may change: they do not change what a cell computes.
RUNTIME_OPTIONS = ("train.progress", "train.threads", "train.log_every", "data_dir", "data.data_dir")


# ------------------------------------------------------------------------------------------------ the grid
def as_list(value, name: str, cast=str) -> list:
    """'a,b' / ('a', 'b') / 5 -> ['a', 'b'] / [5], order kept, repeats dropped; a bad item names ``--name``."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in (str(i).strip() for i in items):
        try:
            v = cast(item)
        except ValueError:
            raise ConfigError(f"{name}={value!r} is invalid; allowed: a comma-separated list of {cast.__name__}") from None
        if item and v not in out:
            out.append(v)
    require(bool(out), name, value, "one or more comma-separated values")
    return out


def make_grid(presets, scenarios, methods, regularizers, seeds, known: list[Cell] = (), backbones=None) -> list[Cell]:
    """Seeds outermost (a first complete table comes early); a cell already in ``known`` keeps its name. Several
    ``backbones`` put the backbone before the method in the names (``vit_tiny-mocov3-pnr-s5``)."""
    by_key = {c.key: c for c in known}
    cells = []
    for preset in presets:
        for scenario in scenarios or [None]:
            for seed in seeds:
                for backbone in backbones or [None]:
                    for method in methods:
                        for reg in regularizers:
                            prefix = ([preset] * (len(presets) > 1) + [scenario] * (len(scenarios or ()) > 1)
                                      + [backbone] * (len(backbones or ()) > 1))
                            cell = Cell("-".join([*prefix, method, reg, f"s{seed}"]), preset, method, reg, seed,
                                        scenario, backbone)
                            cells.append(by_key.get(cell.key, cell))
    return cells


def check_grid(presets, scenarios, methods, regularizers, shared: dict, backbones=None) -> None:
    from fastpnr.config import PRESETS, SCENARIOS
    from fastpnr.methods import METHODS
    from fastpnr.models import BACKBONES
    from fastpnr.regularizers import REGULARIZERS

    for name, values, allowed in (("preset", presets, PRESETS), ("scenario", scenarios or [], SCENARIOS),
                                  ("methods", methods, METHODS), ("regularizers", regularizers, REGULARIZERS),
                                  ("backbones", backbones or [], BACKBONES)):
        bad = [v for v in values if v not in allowed]
        require(not bad, name, bad[0] if bad else None, sorted(allowed) if name != "scenario" else allowed)
    for key in shared:
        if key in GRID_OPTIONS:
            raise ConfigError(f"option --{key} is set by the study grid; allowed: --{GRID_OPTIONS[key]} (a list)")
    known = set().union(*(regularizer_fields(r) for r in regularizers))
    for key in [k for k in shared if k.startswith("regularizer.")]:
        require(key.split(".", 1)[1] in known, "option", f"--{key}",
                f"the fields of the strategies {', '.join(regularizers)}: {', '.join(sorted(known))}")
    require(not (scenarios and ("scenario" in shared or "data.scenario" in shared)), "scenario", scenarios,
            "either --scenario (a list) or --data.scenario, not both")


def normalize_shared(overrides: dict) -> dict:
    """The train options every cell gets: keys as fire gives them (``data-dir`` -> ``data_dir``), JSON values."""
    return json.loads(json.dumps({k.replace("-", "_"): v for k, v in overrides.items()}))


# ------------------------------------------------------------------------------------------------ slots, commands
@dataclass(frozen=True)
class Slot:
    """Where one cell runs: GPUs (CUDA_VISIBLE_DEVICES) or, on CPU, a share of the cores."""

    gpus: tuple[str, ...] = ()
    threads: int | None = None  # per process; None: each cell's own choice (train.threads auto, the load at its start)
    procs: int = 1              # processes of a CPU cell (torchrun over gloo with --nproc_per_cell)

    @property
    def devices(self) -> int:
        """GPUs, or CPU cores (for GPU-/core-hours)."""
        return len(self.gpus) or (self.threads or 1) * self.procs

    @property
    def kind(self) -> str:
        return "gpu" if self.gpus else "cpu"

    def describe(self) -> str:
        if self.gpus:
            return f"GPU {','.join(self.gpus)}"
        procs = f"{self.procs} processes x " if self.procs > 1 else ""
        if self.threads is None:
            return f"CPU, {procs}auto threads"
        return f"CPU, {procs}{self.threads} thread{'s' * (self.threads != 1)}"

    def env(self, base: dict) -> dict:
        env = dict(base)
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        elif self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return env


def make_slots(gpus, nproc_per_cell: int, jobs: int, cpu_count: int | None = None) -> list[Slot]:
    """One slot per ``nproc_per_cell`` GPUs; on CPU ``jobs`` slots, each with its share of the cores (split between
    the cell's ``nproc_per_cell`` gloo processes); one cell of one process at a time: its own auto threads (the cores
    the load average leaves free when it starts: 2 threads beside other jobs were 2-4x slower than 1, issue 37)."""
    require(isinstance(nproc_per_cell, int) and nproc_per_cell >= 1, "nproc_per_cell", nproc_per_cell, "an integer >= 1")
    require(isinstance(jobs, int) and jobs >= 1, "jobs", jobs, "an integer >= 1")
    if gpus is None or gpus == "":
        if jobs == 1 and nproc_per_cell == 1:
            return [Slot()]
        threads = max(1, (cpu_count or os.cpu_count() or 1) // (jobs * nproc_per_cell))
        return [Slot(threads=threads, procs=nproc_per_cell) for _ in range(jobs)]
    ids = as_list(gpus, "gpus", int)
    require(min(ids) >= 0, "gpus", gpus, "GPU indices >= 0")
    require(len(ids) % nproc_per_cell == 0, "gpus", gpus, f"a multiple of --nproc_per_cell {nproc_per_cell} GPUs")
    require(jobs == 1, "jobs", jobs, "1 with --gpus (one cell per GPU slot)")
    return [Slot(gpus=tuple(str(g) for g in ids[i:i + nproc_per_cell])) for i in range(0, len(ids), nproc_per_cell)]


def launcher(nproc: int, log_dir: Path | None = None) -> list[str]:
    """The program of a cell: ``python -m fastpnr``, or torchrun with ``nproc`` processes (one per GPU; gloo on CPU),
    its per-rank error files in ``log_dir`` (the cell's folder; torchrun's default is a new /tmp folder per run)."""
    if nproc == 1:
        return [sys.executable, "-m", "fastpnr"]
    logs = [f"--log-dir={log_dir}"] if log_dir is not None else []
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *logs,
            "-m", "fastpnr"]


def cli_args(options: dict) -> list[str]:
    """{"optim.lr": 0.3, "data.solarize_prob": [0.1, 0.2]} -> ["--optim.lr", "0.3", "--data.solarize_prob", "0.1,0.2"]."""
    args = []
    for key, v in options.items():
        text = ("true" if v else "false") if isinstance(v, bool) else "none" if v is None else \
            ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
        args += [f"--{key}", text]
    return args


def train_args(cell: Cell, folder: Path, shared: dict, slot: Slot, resume: bool) -> list[str]:
    """``train`` arguments of a cell: a fresh run with the grid's options, or ``--resume`` with runtime options only."""
    runtime = {"train.progress": shared.get("train.progress", False)}  # tqdm's carriage returns would fill the log
    if resume:  # the checkpoint's configuration (threads included); only what cannot change the numbers
        kept = {k: shared[k] for k in ("train.log_every",) if k in shared}
        return ["train", "--resume", str(folder), *cli_args({**runtime, **kept})]
    if slot.threads and "train.threads" not in shared:
        runtime["train.threads"] = slot.threads
    if shared.get("train.wandb") and not shared.get("train.wandb_group"):  # wandb: the cells grouped by study
        runtime["train.wandb_group"] = folder.resolve().parent.name
    return ["train", "--preset", cell.preset, "--out", str(folder), *cli_args({**cell.overrides(shared), **runtime})]


def cell_command(cell: Cell, folder: Path, shared: dict, slot: Slot, nproc: int, resume: bool) -> list[str]:
    return launcher(nproc, folder / "torchrun") + train_args(cell, folder, shared, slot, resume)


def close_orphan_attempt(attempts: list[dict], log: Path) -> list[dict]:
    """An attempt whose study died has no end: take the last write of its log, so its device-hours still count."""
    if attempts and "end" not in attempts[-1] and log.exists():
        end = max(log.stat().st_mtime, attempts[-1]["start"])
        attempts[-1].update(end=end, wall_s=end - attempts[-1]["start"], returncode=None,
                            note="the study died; end = the log's last write")
    return attempts


def clear_stale_run(folder: Path) -> None:
    """Remove what an attempt without a checkpoint left (config.json, tb/, ...): nothing there can be resumed."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name not in KEEP_ON_RESTART:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


# ------------------------------------------------------------------------------------------------ the study file
def load_study(out: Path) -> dict:
    study = _read_json(out / STUDY_FILE)
    if not study and (out / STUDY_FILE).exists():
        raise FastPNRError(f"cannot read {out / STUDY_FILE}")
    return study


def known_cells(study: dict) -> list[Cell]:
    return [Cell(**c) for c in study.get("cells", [])]


def check_same_options(study: dict, shared: dict, out: Path) -> None:
    """The cells of one study must share their train options (else the table compares unlike runs)."""
    if not study:
        return
    old = {k: v for k, v in study.get("overrides", {}).items() if k not in RUNTIME_OPTIONS}
    new = {k: v for k, v in shared.items() if k not in RUNTIME_OPTIONS}
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise ConfigError(f"--{key} {new.get(key, '(unset)')} differs from the study in {out} "
                              f"({old.get(key, 'unset')}); allowed: the study's own train options, or a new --out")


def merge_cells(known: list[Cell], grid: list[Cell]) -> list[Cell]:
    seen = {c.key for c in known}
    return list(known) + [c for c in grid if c.key not in seen]


# ------------------------------------------------------------------------------------------------ the lock
def acquire_lock(out: Path) -> Path:
    lock = out / LOCK_FILE
    other = _read_json(lock)
    if other and other.get("pid") != os.getpid() and _alive(other):
        raise FastPNRError(f"a study is already running in {out} (pid {other['pid']} on {other.get('host')}); "
                           f"allowed: wait for it (fastpnr study --status {out}), or delete {lock} if it is gone")
    write_json(lock, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    return lock


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the cell gets SIGTERM when the study dies (even by SIGKILL); its checkpoints are atomic."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------------------ running
@dataclass
class _Running:
    cell: Cell
    slot: Slot
    proc: subprocess.Popen
    start: float
    log: object


class StudyRunner:
    """Runs cells on slots, one process per cell; records each attempt in the cell's ``cell.json``."""

    def __init__(self, out: Path, cells: list[Cell], shared: dict, slots: list[Slot], nproc: int,
                 on_finish=lambda: None, log=print):
        self.out, self.cells, self.shared, self.slots, self.nproc = out, cells, shared, slots, nproc
        self.on_finish, self.log = on_finish, log
        self.t0, self.commit = time.time(), None

    def states(self) -> list[CellState]:
        return [read_state(self.out / c.name) for c in self.cells]

    def progress(self) -> None:
        self.log(progress_line(self.states(), len(self.slots), time.time() - self.t0, time.time(), self.cells))

    def run(self, queue: list[Cell]) -> None:
        queue, free, running = deque(queue), list(self.slots), []
        try:
            while queue or running:
                while queue and free:
                    running.append(self._start(queue.popleft(), free.pop(0)))
                    self.progress()
                time.sleep(POLL_S)
                for r in [r for r in running if r.proc.poll() is not None]:
                    running.remove(r)
                    free.append(r.slot)
                    self._finish(r)
                    self.on_finish()
                    self.progress()
        except KeyboardInterrupt:
            self._stop(running)
            raise

    def _start(self, cell: Cell, slot: Slot) -> _Running:
        folder = self.out / cell.name
        resume = (folder / CHECKPOINT).exists()
        if not resume:
            clear_stale_run(folder)
        folder.mkdir(parents=True, exist_ok=True)
        argv = cell_command(cell, folder.resolve(), self.shared, slot, self.nproc, resume)
        self.commit = self.commit or git_commit()
        record = _read_json(folder / CELL_FILE)
        attempts = close_orphan_attempt(record.get("attempts", []), folder / LOG_FILE)
        log = open(folder / LOG_FILE, "a")
        log.write(f"\n=== fastpnr study, attempt {len(attempts) + 1}, {time.strftime('%Y-%m-%d %H:%M:%S')} on "
                  f"{socket.gethostname()} ({slot.describe()}): {shlex.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=slot.env(os.environ),
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        start = time.time()
        attempts.append({"start": start, "mode": "resume" if resume else "fresh", "kind": slot.kind,
                         "devices": slot.devices, "slot": slot.describe(), "commit": self.commit, "command": argv})
        write_json(folder / CELL_FILE, {**record, "status": "running", "pid": proc.pid, "host": socket.gethostname(),
                                        "attempts": attempts})
        self.log(f"[study] start {cell.name} ({'resume' if resume else 'fresh'}, {slot.describe()})")
        return _Running(cell, slot, proc, start, log)

    def _finish(self, r: _Running, stopped: bool = False) -> None:
        r.log.close()
        folder = self.out / r.cell.name
        record = _read_json(folder / CELL_FILE)
        end, returncode = time.time(), r.proc.returncode
        record["attempts"][-1].update(end=end, wall_s=end - r.start, returncode=returncode)
        done, num = _tasks(folder)
        if num and done >= num:
            status, error = "done", None
        elif stopped or returncode < 0 or returncode == EXIT_CHECKPOINTED:  # stopped, or killed by a signal (the
            # user, OOM), or checkpointed on SIGTERM: resumable, not a failure
            status = "interrupted"
            error = "stopped with the study" if stopped else f"killed by signal {-returncode}" if returncode < 0 else \
                "stopped by a signal after its checkpoint"
        else:
            status = "failed"
            error = error_line(folder) if returncode else "exited 0 before finishing every task"
        write_json(folder / CELL_FILE, {**record, "status": status, "pid": None, "error": error})
        self.log(f"[study] {status} {r.cell.name}" + (f": {error}" if error else "") +
                 f" ({fmt_duration(end - r.start)})")

    def _stop(self, running: list[_Running]) -> None:
        """Ctrl-C / SIGTERM: stop the cells (they resume from their last checkpoint on the next run)."""
        if _main_thread():  # `timeout` signals the study and then its whole group: a second signal must not cut this
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for r in running:
            r.proc.terminate()
        for r in running:
            try:
                r.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()
            self._finish(r, stopped=True)


# ------------------------------------------------------------------------------------------------ the study
@dataclass(frozen=True)
class StudyOptions:
    out: Path
    presets: tuple[str, ...]
    scenarios: tuple[str, ...] | None
    methods: tuple[str, ...]
    regularizers: tuple[str, ...]
    seeds: tuple[int, ...]
    shared: dict                        # train options of every cell
    slots: tuple[Slot, ...]
    nproc_per_cell: int = 1
    retry_failed: bool = False
    protocol: str | None = None         # report protocol; None: each run's own
    backbones: tuple[str, ...] | None = None  # model.backbone per cell; None: the preset's


def plan(cells: list[Cell], out: Path, retry_failed: bool) -> tuple[list[Cell], dict[str, CellState]]:
    """(cells to run now, state of every cell): interrupted and pending cells, failed ones when retried."""
    states = {c.name: read_state(out / c.name) for c in cells}
    wanted = ("interrupted", "pending", "failed") if retry_failed else ("interrupted", "pending")
    return [c for c in cells if states[c.name].status in wanted], states


def validate_cells(cells: list[Cell], shared: dict) -> dict[str, str]:
    """{cell name: one-line error} of the cells whose configuration does not resolve (e.g. an option of one method)."""
    from fastpnr.config import build_config

    errors = {}
    for c in cells:
        try:
            build_config(c.preset, c.overrides(shared))
        except FastPNRError as e:
            errors[c.name] = str(e)
    return errors


def record_invalid(out: Path, cell: Cell, error: str) -> None:
    """A cell whose configuration fails: failed without a process, the error in its log as `fastpnr train` prints it."""
    folder = out / cell.name
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOG_FILE, "a") as f:
        f.write(f"\n=== fastpnr study, {time.strftime('%Y-%m-%d %H:%M:%S')}: configuration check\nerror: {error}\n")
    record = _read_json(folder / CELL_FILE)
    write_json(folder / CELL_FILE, {**record, "status": "failed", "pid": None, "error": f"error: {error}"})


def run_study(opts: StudyOptions, log=print) -> dict[str, CellState]:
    """Run (or continue) the study in ``opts.out``; returns the final state of every cell."""
    out = opts.out
    check_grid(opts.presets, opts.scenarios, opts.methods, opts.regularizers, opts.shared, opts.backbones)
    out.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(out)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        return _run_locked(opts, log)
    finally:
        lock.unlink(missing_ok=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_locked(opts: StudyOptions, log) -> dict[str, CellState]:
    from .report import write_report  # now: a study outlives edits of the checkout, its modules must match

    out = opts.out
    study = load_study(out)
    check_same_options(study, opts.shared, out)
    known = known_cells(study)
    grid = make_grid(opts.presets, opts.scenarios, opts.methods, opts.regularizers, opts.seeds, known, opts.backbones)
    cells = merge_cells(known, grid)
    queue, states = plan(grid, out, opts.retry_failed)
    errors = validate_cells(queue, opts.shared)
    if queue and len(errors) == len(queue):
        raise ConfigError(next(iter(errors.values())))
    write_json(out / STUDY_FILE, {"overrides": opts.shared, "slots": len(opts.slots), "cells": [c.to_dict() for c in cells],
                                  "created": study.get("created", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
                                  "command": study.get("command", shlex.join(sys.argv))})
    for cell in [c for c in queue if c.name in errors]:
        record_invalid(out, cell, errors[cell.name])
    queue = [c for c in queue if c.name not in errors]
    log(summary_line(out, grid, states, queue, errors))

    def report():
        write_report(out, cells, opts.protocol)

    runner = StudyRunner(out, cells, opts.shared, list(opts.slots), opts.nproc_per_cell, on_finish=report, log=log)
    runner.run(queue)  # the report is rewritten after every finished cell
    if not queue:
        if errors or not (out / "report.json").exists():
            report()
        runner.progress()
    log(f"report: {out / 'report.md'}")
    return {c.name: read_state(out / c.name) for c in cells}


def summary_line(out: Path, grid: list[Cell], states: dict, queue: list[Cell], errors: dict) -> str:
    count = lambda status: sum(states[c.name].status == status for c in grid)
    resumes = sum(states[c.name].status == "interrupted" for c in queue)
    failed_kept = count("failed") - sum(states[c.name].status == "failed" for c in queue)
    return (f"[study] {out}: {len(grid)} cells in the grid; {count('done')} done, {len(queue)} to run "
            f"({resumes} resumed), {len(errors)} with a bad configuration, {count('running')} running elsewhere, "
            f"{failed_kept} failed before (--retry-failed reruns them)")


def status_report(out: Path) -> str:
    """``fastpnr study --status DIR``: every cell's state, tasks, time and error; the progress line with its ETA."""
    study = load_study(out)
    if not study:
        raise FastPNRError(f"{out} is not a study folder: {STUDY_FILE} is missing")
    cells = known_cells(study)
    states = [read_state(out / c.name) for c in cells]
    now = time.time()
    lines = [f"{'cell':<32} {'status':<12} {'tasks':>6} {'time':>9}  error"]
    for c, s in zip(cells, states):
        tasks = f"{s.tasks_done}/{s.num_tasks or '?'}"
        spent = s.wall_s + s.running_for(now)
        err = (s.record.get("error") or "") if s.status == "failed" else ""
        lines.append(f"{c.name:<32} {s.status:<12} {tasks:>6} {fmt_duration(spent):>9}  {err}")
    starts = [a["start"] for s in states for a in s.record.get("attempts", [])]
    elapsed = now - min(starts) if starts else 0.0
    lines.append(progress_line(states, study.get("slots", 1), elapsed, now, cells))
    return "\n".join(lines)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt
