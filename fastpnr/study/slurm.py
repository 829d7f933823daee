"""``fastpnr study --executor slurm``: every cell one Slurm job, submitted through submitit (``pip install
fastpnr[slurm]``); the study process may exit after submitting.

Study folder, besides ``fastpnr.study.runner``'s files:
    slurm_jobs.json   cell name -> the Slurm job ids submitted for it (written only by the submitting study, under
                      its lock, so a cell with a job in the queue is never submitted again)
    slurm/            submitit's pickles and the jobs' own stdout/stderr (``<job id>_0_log.out``)

A job runs its cell's ``python -m fastpnr train`` (torchrun for several GPUs or nodes, the rendezvous from Slurm's
environment), records the attempt in the cell's ``cell.json`` as the local runner does, and rewrites the study's
report when it ends. Slurm signals the job before it stops it (``--signal=USR2@<signal_delay_s>`` before the time
limit; SIGTERM on preemption, ``scontrol requeue`` or ``scancel``): the train process writes its checkpoint at the
next step boundary (``fastpnr.system.preempt``) and exits; on USR2 submitit requeues the job, which resumes the cell with
``train --resume``. Job states come from ``squeue`` (no accounting database, ``sacct``, is needed): a job that has
left the queue is what its cell's record says.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import runner as st
from fastpnr.errors import ConfigError, FastPNRError, require
from fastpnr.system.preempt import EXIT_CHECKPOINTED

JOBS_FILE, SUBMITIT_DIR, REPORT_LOCK = "slurm_jobs.json", "slurm", ".report.lock"
SIGNAL_DELAY_S = 120        # --signal=USR2@this: the job's warning before its time limit (one step and a checkpoint)
MIN_WORK_S = 60             # a job must run at least this long before its warning (imports, data, one step)
MAX_TIMEOUTS = 100          # submitit requeues a job this many times after its time limit (preemptions: always)
CELL_PROGRAM: list[str] | None = None  # replaces `-m fastpnr` of the jobs' launcher (the tests' stand-in trainers)
POLL_S = 5.0                # --slurm.wait: seconds between two squeue calls
# Slurm states of a job that is still in the queue or will be again: its cell must not be submitted twice.
ACTIVE = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SIGNALING", "STAGE_OUT", "PREEMPTED", "RESV_DEL_HOLD"}
# sbatch options that --slurm.* or fastpnr set: --slurm.extra may not repeat them.
MANAGED = {"partition": "partition", "p": "partition", "time": "time", "t": "time", "gpus": "gpus_per_cell",
           "gpus-per-node": "gpus_per_cell", "gres": "gpus_per_cell", "cpus-per-task": "cpus_per_cell",
           "c": "cpus_per_cell", "mem": "mem", "account": "account", "A": "account", "qos": "qos", "q": "qos",
           "nodes": "nodes", "N": "nodes", "array": None, "output": None, "o": None, "error": None, "e": None,
           "signal": "signal_delay_s", "job-name": None, "J": None, "open-mode": None, "ntasks-per-node": None,
           "requeue": None, "no-requeue": None, "wrap": None}


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None    # --partition (default: the cluster's default partition)
    time: str = "4:00:00"           # --time of each job: MINUTES, H:MM:SS or D-HH:MM:SS (rounded up to minutes)
    gpus_per_cell: int = 0          # --gpus-per-node (gpus_per_cell / nodes); 0: a CPU cell
    cpus_per_cell: int = 1          # --cpus-per-task (the cell's threads, shared by its processes)
    mem: str | None = None          # --mem per node, e.g. 16G (default: the partition's)
    account: str | None = None      # --account
    qos: str | None = None          # --qos
    extra: str | None = None        # further sbatch options, verbatim, e.g. "--constraint=a100 --exclusive"
    nodes: int = 1                  # --nodes of each cell: torchrun on every node (multi-node DDP)
    signal_delay_s: int = SIGNAL_DELAY_S  # --signal=USR2@this: seconds of warning before the time limit
    wait: bool = False              # stay until every job has left the queue, then write the report

    @property
    def gpus_per_node(self) -> int:
        return self.gpus_per_cell // self.nodes


def slurm_options(overrides: dict) -> tuple[SlurmOptions, dict]:
    """Split ``--slurm.*`` off the study's options: (SlurmOptions, the rest). Each bad value is one line."""
    from dataclasses import fields

    names = {f.name: f for f in fields(SlurmOptions)}
    given = {k.split(".", 1)[1].replace("-", "_"): v for k, v in overrides.items() if k.startswith("slurm.")}
    rest = {k: v for k, v in overrides.items() if not k.startswith("slurm.")}
    for key in given:
        require(key in names, "option", f"--slurm.{key}", ", ".join(f"--slurm.{n}" for n in names))
    require(given.get("extra") is not True, "slurm.extra", True,
            "sbatch options as one value, with '=': --slurm.extra='--constraint=a100 --exclusive'")
    opts = SlurmOptions(**{k: (str(v) if names[k].type in ("str | None", "str") and v is not None else v)
                           for k, v in given.items()})
    for name in ("gpus_per_cell", "cpus_per_cell", "nodes", "signal_delay_s"):
        value, low = getattr(opts, name), 0 if name == "gpus_per_cell" else 1
        require(isinstance(value, int) and not isinstance(value, bool) and value >= low, f"slurm.{name}", value,
                f"an integer >= {low}")
    require(opts.gpus_per_cell % opts.nodes == 0, "slurm.gpus_per_cell", opts.gpus_per_cell,
            f"a multiple of --slurm.nodes {opts.nodes} (the same GPUs on every node)")
    require(opts.nodes == 1 or opts.gpus_per_cell > 0, "slurm.nodes", opts.nodes, "1 for a CPU cell")
    require(opts.mem is None or re.fullmatch(r"\d+[KMGT]?", opts.mem) is not None, "slurm.mem", opts.mem,
            "an integer with an optional unit K, M, G or T (e.g. 16G)")
    require(isinstance(opts.wait, bool), "slurm.wait", opts.wait, "true or false")
    time_seconds(opts.time)
    extra_parameters(opts.extra)
    return opts, rest


def time_seconds(text) -> int:
    """sbatch's --time in seconds: MINUTES, MINUTES:SECONDS, H:MM:SS, D-H, D-H:MM or D-H:MM:SS."""
    s = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise ConfigError(f"slurm.time={text!r} is invalid; allowed: MINUTES, H:MM:SS or D-HH:MM:SS (sbatch --time)")
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-H[:MM[:SS]]
        return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:     # H:MM:SS
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)  # MINUTES[:SECONDS]


def fmt_time(seconds: float) -> str:
    return st.fmt_duration(seconds)


def extra_parameters(extra: str | None) -> dict:
    """--slurm.extra "--constraint=a100 --exclusive" -> {"constraint": "a100", "exclusive": True} (submitit's
    additional_parameters); an option that --slurm.* sets is refused."""
    if not extra:
        return {}
    out, words = {}, shlex.split(str(extra))
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-"):
            raise ConfigError(f"slurm.extra={extra!r} is invalid; allowed: sbatch options (--name=value, --flag), "
                              f"not {word!r}")
        name, _, value = word.lstrip("-").partition("=")
        if name in MANAGED:
            owner = MANAGED[name]
            raise ConfigError(f"slurm.extra={extra!r} is invalid; allowed: options fastpnr does not set (--{name} is "
                              + (f"--slurm.{owner})" if owner else "set by fastpnr)"))
        if not value and i + 1 < len(words) and not words[i + 1].startswith("-"):
            value, i = words[i + 1], i + 1
        out[name.replace("-", "_")] = value or True
        i += 1
    return out


def sbatch_parameters(opts: SlurmOptions, name: str) -> dict:
    """submitit's SlurmExecutor parameters of every job of the study (docs/DEVELOPING.md, "Studies on a Slurm cluster", maps them to sbatch)."""
    params = {"job_name": name, "time": math.ceil(time_seconds(opts.time) / 60), "nodes": opts.nodes,
              "ntasks_per_node": 1, "cpus_per_task": opts.cpus_per_cell, "signal_delay_s": opts.signal_delay_s,
              "stderr_to_stdout": True, "additional_parameters": {"requeue": True, **extra_parameters(opts.extra)}}
    if opts.gpus_per_cell:
        params["gpus_per_node"] = opts.gpus_per_node
    for key in ("partition", "mem", "account", "qos"):
        if getattr(opts, key) is not None:
            params[key] = getattr(opts, key)
    return params


# ------------------------------------------------------------------------------------------------ checks
def require_submitit():
    try:
        import submitit
    except ImportError:
        raise FastPNRError("--executor slurm needs submitit; allowed: pip install 'fastpnr[slurm]', or --executor "
                           "local") from None
    return submitit


def _scontrol(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)


def partition_info(partition: str | None) -> dict:
    """``scontrol -o show partition``: {"PartitionName": ..., "MaxTime": ..., ...} of ``partition`` or the default one."""
    res = _scontrol("-o", "show", "partition")
    if res.returncode:
        raise FastPNRError(f"scontrol show partition failed: {(res.stderr or res.stdout).strip()}; allowed: a "
                           "reachable Slurm controller (sinfo), or --executor local")
    parts = [dict(kv.split("=", 1) for kv in line.split() if "=" in kv) for line in res.stdout.splitlines() if line]
    names = [p.get("PartitionName") for p in parts]
    if partition is None:
        default = [p for p in parts if p.get("Default") == "YES"]
        if not default:
            raise ConfigError(f"slurm.partition=None is invalid; allowed: one of {', '.join(names)} (no default)")
        return default[0]
    require(partition in names, "slurm.partition", partition, names)
    return parts[names.index(partition)]


def measured_epoch_s(out: Path) -> float | None:
    """The longest epoch of this study's finished tasks: each task's training time / epochs (metrics.json)."""
    longest = None
    for metrics in out.glob("*/metrics.json"):
        m, cfg = st._read_json(metrics), st._read_json(metrics.with_name("config.json"))
        epochs = cfg.get("optim", {}).get("epochs")
        for t in m.get("task_time_s", []) if epochs else []:
            longest = max(longest or 0.0, t / epochs)
    return longest


def min_time_s(opts: SlurmOptions, epoch_s: float | None) -> float:
    """A job must train one epoch before its warning signal: signal delay + startup + the measured epoch (without
    a finished cell yet, the startup allowance alone)."""
    return opts.signal_delay_s + MIN_WORK_S + (epoch_s or 0.0)


def check_cluster(opts: SlurmOptions, out: Path) -> dict:
    """Before anything is submitted: sbatch on the PATH, the partition, the time limit (one line each)."""
    for tool in ("sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            raise FastPNRError(f"--executor slurm needs {tool} on the PATH (Slurm's client commands); allowed: a "
                               "Slurm login node, or --executor local")
    part = partition_info(opts.partition)
    limit, seconds = part.get("MaxTime", "UNLIMITED"), time_seconds(opts.time)
    if limit not in ("UNLIMITED", "INFINITE"):
        require(seconds <= time_seconds(limit), "slurm.time", opts.time,
                f"at most the partition {part['PartitionName']}'s MaxTime {limit}")
    epoch_s = measured_epoch_s(out)
    need = min_time_s(opts, epoch_s)
    why = f"one epoch ({fmt_time(epoch_s)}, measured in this study) + " if epoch_s else ""
    require(seconds >= need, "slurm.time", opts.time,
            f"at least {fmt_time(need)}: {why}{MIN_WORK_S} s to start + the {opts.signal_delay_s} s warning signal "
            "(--slurm.signal_delay_s)")
    return part


# ------------------------------------------------------------------------------------------------ the job
def slurm_launcher(nproc: int, nodes: int, env: dict, hostnames: list[str], log_dir: Path) -> list[str]:
    """The program of a cell in its job: ``python -m fastpnr`` or torchrun; on several nodes one torchrun per node
    with the c10d rendezvous on the job's first node (port from the job id), node rank SLURM_NODEID."""
    if nodes == 1:
        return st.launcher(nproc, log_dir)
    job = env["SLURM_JOB_ID"]
    port = 29500 + int(job) % 20000
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc_per_node={nproc}",
            f"--node_rank={env['SLURM_NODEID']}", "--rdzv_backend=c10d", f"--rdzv_endpoint={hostnames[0]}:{port}",
            f"--rdzv_id=fastpnr-{job}", f"--log-dir={log_dir}", "-m", "fastpnr"]


def job_slot(env: dict, gpus: int, cpus: int, nproc: int) -> st.Slot:
    """The cell's resources inside its job: Slurm's GPUs (CUDA_VISIBLE_DEVICES), else the job's cores."""
    if gpus:
        return st.Slot(gpus=tuple(env.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus)))).split(",")))
    return st.Slot(threads=max(1, cpus // nproc), procs=nproc)


def job_id(env: dict) -> str:
    """The id squeue lists: ARRAY_TASK (``12_3``) for an array task, else the job id."""
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID", "?")


_RUNNING: dict = {}  # in the job process: the train process and whether a stop signal came (not pickled)


def _ignore_stop_signals() -> None:  # pragma: no cover - in the child between fork and exec
    """The train process starts with SIGTERM/SIGUSR2 ignored until ``fastpnr.system.preempt`` installs its handlers (a
    signal during the imports must not kill it; torchrun then survives USR2 and its workers inherit the same)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


@dataclass
class CellJob:
    """What a Slurm job runs (pickled by submitit): one attempt of one cell, fresh or resumed from its checkpoint."""

    out: str
    cell: dict
    cells: list = field(default_factory=list)       # the study's cells (the report)
    shared: dict = field(default_factory=dict)
    nproc: int = 1                                   # processes per node (GPUs, or gloo processes on CPU)
    nodes: int = 1
    gpus: int = 0                                    # per node
    cpus: int = 1
    protocol: str | None = None
    wait_s: float = SIGNAL_DELAY_S - 30              # checkpoint(): how long the train process may take to stop
    program: list | None = None                      # instead of `-m fastpnr` in the launcher (CELL_PROGRAM)

    def __call__(self) -> str:
        env = dict(os.environ)
        rank = int(env.get("SLURM_PROCID", 0))
        cell, folder = st.Cell(**self.cell), Path(self.out) / self.cell["name"]
        if st.read_state(folder).status == "done":  # e.g. a job requeued after its cell finished
            return "done"
        resume = (folder / st.CHECKPOINT).exists()
        if rank == 0 and not resume:
            st.clear_stale_run(folder)
        folder.mkdir(parents=True, exist_ok=True)
        hostnames = _hostnames(env) if self.nodes > 1 else [socket.gethostname()]
        slot = job_slot(env, self.gpus, self.cpus, self.nproc)
        launch = slurm_launcher(self.nproc, self.nodes, env, hostnames, folder / "torchrun")
        if self.program:  # python or torchrun run a script the same way they run the module
            launch = launch[:-2] + list(self.program)
        argv = launch + st.train_args(cell, folder, self.shared, slot, resume)
        log_name = st.LOG_FILE if rank == 0 else f"train.node{env.get('SLURM_NODEID', rank)}.log"
        log = open(folder / log_name, "a")
        record = st._read_json(folder / st.CELL_FILE) if rank == 0 else {}
        attempts = st.close_orphan_attempt(record.get("attempts", []), folder / st.LOG_FILE) if rank == 0 else []
        log.write(f"\n=== fastpnr study, attempt {len(attempts) + 1}, {time.strftime('%Y-%m-%d %H:%M:%S')} on "
                  f"{socket.gethostname()} (Slurm job {job_id(env)}, {slot.describe()}): {shlex.join(argv)}\n")
        log.flush()
        signal.signal(signal.SIGTERM, _note_signal)  # submitit only logs it; the train process stops on its own
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=slot.env(env),
                                preexec_fn=_ignore_stop_signals)
        _RUNNING.update(proc=proc, signalled=False, recorded=False, log=log, start=time.time())
        if rank == 0:
            attempts.append({"start": _RUNNING["start"], "mode": "resume" if resume else "fresh", "kind": slot.kind,
                             "devices": slot.devices * self.nodes, "slot": slot.describe(), "commit": st.git_commit(),
                             "command": argv, "slurm_job": job_id(env),
                             "slurm_restarts": int(env.get("SLURM_RESTART_COUNT", 0))})
            st.write_json(folder / st.CELL_FILE, {**record, "status": "running", "pid": proc.pid,
                                                  "host": socket.gethostname(), "slurm_job": job_id(env),
                                                  "attempts": attempts})
        return self._finish(rank, proc.wait())

    def _finish(self, rank: int, rc: int) -> str:
        """Record the attempt's end in cell.json (rank 0), then rewrite the study's report. Returns the status."""
        _RUNNING["log"].close()
        if rank != 0 or _RUNNING["recorded"]:
            return "recorded"
        _RUNNING["recorded"] = True
        folder = Path(self.out) / self.cell["name"]
        record = st._read_json(folder / st.CELL_FILE)
        end = time.time()
        record["attempts"][-1].update(end=end, wall_s=end - _RUNNING["start"], returncode=rc)
        done, num = st._tasks(folder)
        if num and done >= num:
            status, error = "done", None
        elif rc == EXIT_CHECKPOINTED or rc < 0 or (rc and _RUNNING["signalled"]):  # stopped by Slurm: resumable
            status, error = "interrupted", "stopped by a Slurm signal after its checkpoint" if rc == EXIT_CHECKPOINTED \
                else f"stopped by Slurm (exit {rc})"
        else:
            status = "failed"
            error = st.error_line(folder) if rc else "exited 0 before finishing every task"
        st.write_json(folder / st.CELL_FILE, {**record, "status": status, "pid": None, "error": error})
        if status != "interrupted":
            write_report_locked(Path(self.out), [st.Cell(**c) for c in self.cells], self.protocol)
        return status

    def checkpoint(self, *args, **kwargs):
        """submitit's preemption hook (USR2 before the time limit, in the job's main thread): the train process got
        the signal too and writes its checkpoint at the next step; wait for it, record, and requeue this job."""
        import submitit

        _RUNNING["signalled"] = True
        proc = _RUNNING.get("proc")
        if proc is not None:
            rc = _exit_status(proc.pid, self.wait_s)
            if rc is not None:  # else requeued all the same: Slurm's SIGTERM/SIGKILL end it, its last checkpoint resumes
                self._finish(int(os.environ.get("SLURM_PROCID", 0)), rc)
        return submitit.helpers.DelayedSubmission(CellJob(**asdict(self)))


def _exit_status(pid: int, timeout_s: float) -> int | None:
    """The exit code of child ``pid`` once it has exited (a signal: minus its number), None after ``timeout_s``.
    Without reaping it (WNOWAIT): this runs in a signal handler that interrupted ``Popen.wait()``, which holds the
    Popen's wait lock and reaps the child itself when the handler returns."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is not None and info.si_pid == pid:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        time.sleep(0.2)
    return None


def _note_signal(signum, frame) -> None:
    _RUNNING["signalled"] = True


def _hostnames(env: dict) -> list[str]:
    res = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True,
                         text=True, timeout=60, check=True)
    return res.stdout.split()


def write_report_locked(out: Path, cells: list, protocol: str | None) -> None:
    """The report, one writer at a time (jobs that end together)."""
    import fcntl

    from .report import write_report

    with open(out / REPORT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_report(out, cells, protocol)


# ------------------------------------------------------------------------------------------------ queue and states
@dataclass(frozen=True)
class QueueEntry:
    state: str
    reason: str


def squeue() -> dict[str, QueueEntry]:
    """{job id: (state, reason)} of the user's jobs in the queue (array tasks one by one). Raises when squeue fails:
    an unknown queue must never look empty (its cells would be submitted twice)."""
    import getpass

    res = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"], capture_output=True,
                         text=True, timeout=60)
    if res.returncode:
        raise FastPNRError(f"squeue failed: {(res.stderr or res.stdout).strip()}; allowed: a reachable Slurm "
                           "controller (the same command again attaches to the submitted jobs)")
    entries = {}
    for line in res.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            entries[parts[0]] = QueueEntry(parts[1], parts[2])
    return entries


def load_jobs(out: Path) -> dict[str, list[str]]:
    return st._read_json(out / JOBS_FILE)


def cell_state(folder: Path, jobs: list[str], queue: dict[str, QueueEntry]) -> tuple[st.CellState, str]:
    """(the cell's state, its Slurm column). A job in the queue: running (also while it records a finished cell),
    queued (never ran) or requeued (pending again after a signal); out of the queue the cell's own record decides (a "running" record then means the job
    died without writing its end: interrupted or pending, by its checkpoint)."""
    state = st.read_state(folder)
    job = jobs[-1] if jobs else None
    entry = queue.get(job) if job else None
    if entry is not None and entry.state in ACTIVE:  # first: a job that wrote its metrics may still be recording
        ran = bool(state.record.get("attempts")) and state.record.get("slurm_job") == job
        if entry.state in ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT"):
            status = "running"
        else:
            status = "requeued" if ran else "queued"
        return st.CellState(status, state.tasks_done, state.num_tasks, state.record), \
            f"{job} {entry.state}" + (f" ({entry.reason})" if entry.reason not in ("None", "") else "")
    if state.status == "done":
        return state, f"{job} done" if job else ""
    if state.status == "running":  # its job is gone without a record of its end
        status = "interrupted" if (folder / st.CHECKPOINT).exists() else "pending"
        return st.CellState(status, state.tasks_done, state.num_tasks, state.record), f"{job} gone"
    return state, f"{job} ended" if job else ""


# ------------------------------------------------------------------------------------------------ the study
def run_slurm_study(opts: st.StudyOptions, slurm: SlurmOptions, log=print) -> dict[str, st.CellState]:
    """Submit the cells of the study that need a job (none twice); write the report from what has finished."""
    submitit = require_submitit()
    out = opts.out
    st.check_grid(opts.presets, opts.scenarios, opts.methods, opts.regularizers, opts.shared, opts.backbones)
    check_cluster(slurm, out)
    out.mkdir(parents=True, exist_ok=True)
    lock = st.acquire_lock(out)
    try:
        return _submit_locked(submitit, opts, slurm, log)
    finally:
        lock.unlink(missing_ok=True)


def _submit_locked(submitit, opts: st.StudyOptions, slurm: SlurmOptions, log) -> dict[str, st.CellState]:
    out = opts.out
    study = st.load_study(out)
    st.check_same_options(study, opts.shared, out)
    known = st.known_cells(study)
    grid = st.make_grid(opts.presets, opts.scenarios, opts.methods, opts.regularizers, opts.seeds, known,
                        opts.backbones)
    cells = st.merge_cells(known, grid)
    jobs, queue = load_jobs(out), squeue()
    states = {c.name: cell_state(out / c.name, jobs.get(c.name, []), queue)[0] for c in cells}
    wanted = ("interrupted", "pending", "failed") if opts.retry_failed else ("interrupted", "pending")
    todo = [c for c in grid if states[c.name].status in wanted]
    errors = st.validate_cells(todo, opts.shared)
    if todo and len(errors) == len(todo):
        raise ConfigError(next(iter(errors.values())))
    st.write_json(out / st.STUDY_FILE, {
        "overrides": opts.shared, "slots": len(grid), "cells": [c.to_dict() for c in cells], "executor": "slurm",
        "slurm": asdict(slurm), "created": study.get("created", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        "command": study.get("command", shlex.join(sys.argv))})
    for cell in [c for c in todo if c.name in errors]:
        st.record_invalid(out, cell, errors[cell.name])
    todo = [c for c in todo if c.name not in errors]
    submitted = submit(submitit, out, todo, cells, opts, slurm) if todo else {}
    for name, job in submitted.items():
        jobs.setdefault(name, []).append(job)
    st.write_json(out / JOBS_FILE, jobs)
    count = lambda *names: sum(states[c.name].status in names for c in grid)
    resumed = sum(states[c.name].status == "interrupted" for c in todo)
    log(f"[study] {out}: {len(grid)} cells in the grid; {count('done')} done, {len(submitted)} submitted "
        f"({resumed} resumed), {count('queued', 'requeued', 'running')} already in the Slurm queue, {len(errors)} with "
        f"a bad configuration, {count('failed') - sum(states[c.name].status == 'failed' for c in todo)} failed before "
        f"(--retry-failed resubmits them)")
    if submitted:
        log(f"[study] Slurm jobs: {' '.join(submitted.values())}; fastpnr study --status {out}")
    write_report_locked(out, cells, opts.protocol)  # from what has finished; every job rewrites it when it ends
    if slurm.wait:
        wait_for_jobs(out, cells, opts.protocol, log)
    return {c.name: cell_state(out / c.name, load_jobs(out).get(c.name, []), squeue())[0] for c in cells}


def submit(submitit, out: Path, todo: list[st.Cell], cells: list[st.Cell], opts: st.StudyOptions,
           slurm: SlurmOptions) -> dict[str, str]:
    """One job per cell, one sbatch array for all of them (same resources); returns {cell name: job id}."""
    executor = submitit.SlurmExecutor(folder=out / SUBMITIT_DIR / "%j", max_num_timeout=MAX_TIMEOUTS)
    executor.update_parameters(**sbatch_parameters(slurm, f"fastpnr-{out.name}"))
    nproc = slurm.gpus_per_node or opts.nproc_per_cell
    spec = {"out": str(out), "cells": [c.to_dict() for c in cells], "shared": opts.shared, "nproc": nproc,
            "nodes": slurm.nodes, "gpus": slurm.gpus_per_node, "cpus": slurm.cpus_per_cell, "protocol": opts.protocol,
            "wait_s": max(slurm.signal_delay_s - 30, 10), "program": CELL_PROGRAM}
    for cell in todo:
        (out / cell.name).mkdir(parents=True, exist_ok=True)
    with executor.batch():
        handles = [executor.submit(CellJob(cell=c.to_dict(), **spec)) for c in todo]
    return {c.name: h.job_id for c, h in zip(todo, handles)}


def wait_for_jobs(out: Path, cells: list[st.Cell], protocol: str | None, log=print, poll_s: float | None = None) -> None:
    """Until no cell of the study has a job in the queue; a progress line when something changes."""
    last = None
    while True:
        jobs, queue = load_jobs(out), squeue()
        pairs = [cell_state(out / c.name, jobs.get(c.name, []), queue) for c in cells]
        line = progress_line([s for s, _ in pairs])
        if line != last:
            log(line)
            last = line
        if not any(s.status in ("queued", "requeued", "running") for s, _ in pairs):
            break
        time.sleep(POLL_S if poll_s is None else poll_s)
    write_report_locked(out, cells, protocol)


def progress_line(states: list[st.CellState]) -> str:
    count = lambda *names: sum(s.status in names for s in states)
    return (f"[study] {count('done')}/{len(states)} done, {count('running')} running, {count('queued', 'requeued')} "
            f"in the queue ({count('requeued')} requeued), {count('failed')} failed, "
            f"{count('pending', 'interrupted')} to submit")


def status_report(out: Path) -> str:
    """``fastpnr study --status DIR`` of a Slurm study: each cell's state, its job and the job's Slurm state."""
    study = st.load_study(out)
    cells = st.known_cells(study)
    jobs = load_jobs(out)
    try:
        queue = squeue()
    except (FastPNRError, OSError, subprocess.SubprocessError) as e:
        queue, note = {}, f"(queue unknown: {str(e).splitlines()[0] if str(e) else e})"
    else:
        note = ""
    now = time.time()
    lines = [f"{'cell':<32} {'status':<12} {'tasks':>6} {'time':>9} {'attempts':>8}  slurm / error"]
    states = []
    for c in cells:
        s, column = cell_state(out / c.name, jobs.get(c.name, []), queue)
        states.append(s)
        spent = s.wall_s + (now - s.record["attempts"][-1]["start"] if s.status == "running" and
                            s.record.get("attempts") and "end" not in s.record["attempts"][-1] else 0.0)
        err = s.record.get("error") or "" if s.status in ("failed", "interrupted", "requeued") else ""
        extra = "  ".join(x for x in (column, err) if x)
        lines.append(f"{c.name:<32} {s.status:<12} {s.tasks_done}/{s.num_tasks or '?':<4} {fmt_time(spent):>9} "
                     f"{len(s.record.get('attempts', [])):>8}  {extra}")
    lines.append(progress_line(states) + (f" {note}" if note else ""))
    return "\n".join(lines)
