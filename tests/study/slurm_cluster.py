"""A one-node Slurm cluster on this machine, for the Slurm tests: munged, slurmctld and slurmd started from a
generated configuration in one folder (config, state, spool, logs, sockets), stopped by their process ids.

Nothing is installed here: without Debian's ``slurm-wlm`` and ``munge`` (``.ci/run`` installs them) or without root
(slurmd runs jobs as their users), ``start`` raises ``ClusterUnavailable`` with one line, and the tests skip.
Accounting (slurmdbd, ``sacct``) is not run: fastpnr reads job states with ``squeue`` and the cells' own records.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
START_TIMEOUT_S = 120.0  # the node answers in seconds on an idle machine; under load it can take much longer


class ClusterUnavailable(RuntimeError):
    """Slurm cannot be started here (packages missing, not root, a daemon that does not come up)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    """The node's memory for slurm.conf, below the machine's so slurmd's own check never drains the node."""
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return max(256, total_kb // 1024 // 2)


def slurm_conf(root: Path, host: str, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int,
               munge_socket: Path) -> str:
    """A minimal slurm.conf: one node (this machine), partition ``debug``, no cgroups, no accounting."""
    return "\n".join([
        "ClusterName=fastpnrtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "KillWait=30",               # seconds between a job's SIGTERM and SIGKILL (Slurm's default)
        "MinJobAge=600",              # finished jobs stay visible to squeue/scontrol for 10 minutes
        "SlurmdTimeout=300",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class Cluster:
    root: Path
    env: dict = field(default_factory=dict)      # SLURM_CONF for the commands and the code under test
    procs: dict = field(default_factory=dict)    # daemon name -> Popen

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        res = subprocess.run(list(argv), capture_output=True, text=True, env={**os.environ, **self.env}, timeout=timeout)
        if check and res.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {(res.stderr or res.stdout).strip()}")
        return res

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for name in ("munged", "slurmctld", "slurmd"):
            path = self.root / f"{name}.log"
            if path.exists():
                out += [f"--- {name}.log"] + path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(out)

    def stop(self) -> None:
        """SIGTERM each daemon this cluster started (by its pid), SIGKILL after 30 s; slurmd first."""
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise ClusterUnavailable(why)


def start(root: Path) -> Cluster:
    """Start munged, slurmctld and slurmd in ``root``; returns once the node is idle. Raises ClusterUnavailable."""
    missing = [p for p in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol") if shutil.which(p) is None]
    _need(not missing, f"Slurm not installed (missing {', '.join(missing)}; apt-get install slurm-wlm munge)")
    _need(os.geteuid() == 0, "Slurm tests need root (slurmd runs jobs as their users)")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    munge_socket = root / "munge.socket"
    host = socket.gethostname().split(".")[0]
    cluster = Cluster(root, env={"SLURM_CONF": str(root / "slurm.conf")})
    cluster.conf.write_text(slurm_conf(root, host, os.cpu_count() or 1, _real_memory_mb(), _free_port(), _free_port(),
                                       munge_socket))
    env = {**os.environ, **cluster.env}
    commands = {
        "munged": ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}",
                   f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                   f"--seed-file={root / 'munged.seed'}"],
        "slurmctld": ["slurmctld", "-D", "-i", "-f", str(cluster.conf)],   # -i: ignore state left by nothing
        "slurmd": ["slurmd", "-D", "-f", str(cluster.conf), "-N", host],
    }
    try:
        for name in DAEMONS:
            with open(root / f"{name}.out", "w") as out:
                cluster.procs[name] = subprocess.Popen(commands[name], stdout=out, stderr=subprocess.STDOUT, env=env,
                                                       start_new_session=True)  # a test's Ctrl-C does not hit them
            if name == "munged":
                _wait(lambda: munge_socket.exists(), cluster, "munged")
        _wait(lambda: _node_idle(cluster), cluster, "the node")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _node_idle(cluster: Cluster) -> bool:
    res = cluster.run("sinfo", "-h", "-o", "%T", check=False, timeout=30)
    return res.returncode == 0 and res.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated")


def _wait(ready, cluster: Cluster, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        if dead:
            out = (cluster.root / f"{dead[0]}.out").read_text(errors="replace").strip().splitlines()
            raise ClusterUnavailable(f"{dead[0]} exited: {out[-1] if out else 'no output'}")
        try:
            if ready():
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)
    raise ClusterUnavailable(f"{what} did not come up within {START_TIMEOUT_S:.0f} s")
