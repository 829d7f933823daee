"""The one-node Slurm cluster of the Slurm tests (``slurm_cluster``): started once per session from a generated
configuration in a temporary folder, its jobs cancelled and its daemons stopped (by pid) at the end; the tests
that use it skip with one line where Slurm cannot start (packages missing: ``.ci/run`` installs them)."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.study import slurm_cluster as cluster_lib


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    try:
        cluster = cluster_lib.start(tmp_path_factory.mktemp("slurm"))
    except (cluster_lib.ClusterUnavailable, OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"no Slurm cluster: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.env["SLURM_CONF"]  # sbatch, squeue, scontrol of the code under test
    try:
        yield cluster
    finally:
        cluster.run("scancel", "--user", "root", check=False)
        deadline = time.monotonic() + 120  # cancelled jobs end within KillWait (30 s)
        while time.monotonic() < deadline and cluster.run("squeue", "-h", check=False).stdout.strip():
            time.sleep(1)
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous

