"""CPU threads of a run (``train.threads`` None = auto), decided once per process, and OpenMP's wait policy, set
before torch starts its thread pool. Imports no torch: ``fastpnr``'s command line calls ``prepare_environment``
before the command's module imports it.

Why (the CPU table in BENCHMARKS.md, ``fastpnr bench_cpu``, 2-core EPYC, load average 13-16 from other jobs): with
OpenMP's threads spinning while they wait (``OMP_WAIT_POLICY=ACTIVE``; libgomp's default spins too), 2 threads were
8x slower than 1 (4.0 vs 31 img/s) and beside a burner did not finish 3 steps in 150 s: every op's barrier waits for
a thread that another job's process has descheduled. With ``PASSIVE`` a waiting thread sleeps, and 2 threads were
the fastest everywhere measured (70 vs 38 img/s with 1; beside 1 burner 40 vs 19). So fastpnr sets PASSIVE and auto
takes every core; where the user chose another wait policy, auto takes the cores the load average leaves free.
"""
from __future__ import annotations

import functools
import os


def cores() -> int:
    """The cores this process may run on (its affinity mask; os.cpu_count where that is not known)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float:
    """The 1-minute load average (0.0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def threads_for(n_cores: int, load: float, passive: bool = False) -> int:
    """The threads a CPU run takes beside ``load`` other runnable jobs: every core when OpenMP waits ``passive``ly,
    else the cores left free, rounded, at least 1."""
    if passive:
        return n_cores
    return max(1, min(n_cores, int(n_cores - load + 0.5)))


def waits_passively(environ=os.environ) -> bool:
    """OpenMP's waiting threads sleep (``OMP_WAIT_POLICY=PASSIVE``, as ``prepare_environment`` sets it)."""
    return environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def oversubscribed(n_cores: int, load: float) -> str | None:
    """One line when the machine is oversubscribed (load average above the core count), saying what to do; else None."""
    if load <= n_cores:
        return None
    return (f"this machine is oversubscribed: load average {load:.1f} on {n_cores} cores; the run will be several "
            "times slower than on an idle machine: run it when the load is lower, or stop other jobs")


@functools.lru_cache(maxsize=1)
def machine_at_start() -> tuple[int, float]:
    """(cores, 1-minute load average) at the first call in this process: the load at start decides (a run's own
    threads, added to the load later, must not halve them at its evaluation)."""
    return cores(), load_average()


def auto_threads() -> tuple[int, str]:
    """(threads, why) for ``train.threads`` None/auto: every core when OpenMP waits passively, else the cores the
    load average at start leaves free."""
    n, load = machine_at_start()
    if waits_passively():
        return threads_for(n, load, passive=True), f"auto: {n} cores, OMP_WAIT_POLICY=PASSIVE, load average {load:.1f}"
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    return threads_for(n, load), f"auto: load average {load:.1f} on {n} cores, OMP_WAIT_POLICY={policy} (threads spin)"


def prepare_environment(environ=os.environ) -> None:
    """Before torch is imported: OpenMP's wait policy PASSIVE unless the user set one (a waiting thread sleeps
    instead of spinning on a core that another job, or this job's other thread, needs), and ``auto_threads``'
    decision taken now, from the load before this process adds its own."""
    environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    machine_at_start()
