"""Suite-wide fixtures: real data root (skip when absent), an isolated decode cache, tiny run overrides, and a
private temporary folder whose leftovers fail the session."""
from __future__ import annotations

import getpass
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

# OpenMP's wait policy is read when torch loads: PASSIVE, as fastpnr's command line sets it (cpu_threads), for this
# process and the processes the tests start
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

# Everything the tests, fastpnr and the processes they start create with `tempfile` lands in one private folder
# (TMPDIR), removed when the session ends; what a test left there (instead of using tmp_path or cleaning up) fails
# the session. pytest's own tmp_path folders and torch's compile cache stay where they would have been.
_TEMP_ROOT = tempfile.gettempdir()
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", _TEMP_ROOT)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_TEMP_ROOT, f"torchinductor_{getpass.getuser()}"))
SESSION_TMP = Path(tempfile.mkdtemp(prefix="fastpnr-tests-"))
os.environ["TMPDIR"] = tempfile.tempdir = str(SESSION_TMP)
# Third-party temporaries that are removed by their owners at interpreter exit, after the session ends (DALI's
# autograph writes the converted pipeline functions as __autograph_generated_file*.py, deleted at exit).
_THIRD_PARTY = ("pymp-", "matplotlib-", "torchinductor_", "__autograph_generated_file")
# wandb (the [wandb] extra's tests): tempfile.TemporaryDirectory("wandb-media" / "wandb-artifacts") made at import, and
# its service's "wandb-<pid>-..." file; all removed at interpreter exit (checked: none left after a process ends).
_THIRD_PARTY_WANDB = re.compile(r"tmp\w+wandb-(media|artifacts)|wandb-\d+-\d+-\d+")

# One decode cache per test session (inside SESSION_TMP, removed with it), so the suite never depends on (or writes
# to) the user's cache; a $FASTPNR_CACHE set by the user is used (and kept) instead.
if "FASTPNR_CACHE" not in os.environ:
    os.environ["FASTPNR_CACHE"] = tempfile.mkdtemp(prefix="fastpnr-test-cache-")
_SESSION_CACHE = Path(os.environ["FASTPNR_CACHE"])


def torch_threads(cores: int | None = None, load: float | None = None, own: int | None = None,
                  passive: bool | None = None) -> int:
    """torch's intra-op threads for the next test: fastpnr's own policy (``cpu_threads.threads_for``: the cores the
    load leaves free, at least 1; every core when OpenMP waits ``passive``ly), the suite's own ``own`` threads
    (torch's now) taken out of the load. Under load, each op's thread
    barrier waits for a descheduled thread: a ResNet-18 step at 16 px took 1.8-2x the wall time with 2 threads than
    with 1 on the 2-core development machine at load average 13 (2.6x the CPU time)."""
    from fastpnr.system.cpu_threads import threads_for, waits_passively

    cores = cores or os.cpu_count() or 1
    load = os.getloadavg()[0] if load is None else load
    own = torch.get_num_threads() if own is None else own
    passive = waits_passively() if passive is None else passive
    return threads_for(cores, max(0.0, load - own), passive)  # the running test's threads are in the load average


os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads()))  # the processes tests start


@pytest.fixture(autouse=True)
def _threads_for_the_machine_load():
    """Per test, since the load changes (and a run with train.threads changes torch's setting for the process)."""
    torch.set_num_threads(torch_threads())


def leftovers(folder: Path) -> list[str]:
    """Entries of the session's temporary folder that a test or the code under test left behind."""
    return sorted(p.name for p in folder.iterdir() if p != _SESSION_CACHE and not p.name.startswith(_THIRD_PARTY)
                  and not _THIRD_PARTY_WANDB.fullmatch(p.name))


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's temporary folder; fail the session if anything but the decode cache was left in it."""
    left = leftovers(SESSION_TMP) if SESSION_TMP.is_dir() else []
    shutil.rmtree(SESSION_TMP, ignore_errors=True)
    if left:
        msg = (f"the tests left {len(left)} temporary entries behind (write under tmp_path, or clean up): "
               f"{', '.join(left[:10])}")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write("\n")
            reporter.write_line(msg, red=True)
        else:
            print(msg)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def data_root() -> Path:
    from fastpnr.data import resolve_data_root

    root = resolve_data_root()
    if not (root / "cifar10").is_dir():
        pytest.skip(f"real datasets not found at {root} (set $FASTPNR_DATA)")
    return root


def tiny_overrides(data_root, **extra) -> dict:
    """A 2-task CIFAR-10 run of a few seconds: 16 px images, 2 steps per epoch, a width-16 ResNet-18 (1/16 of the
    anchors' FLOPs), small heads, fp32 (CPU bf16 convolutions are 3-6x slower than fp32: a tiny run's 4 steps took
    81 s in bf16, 8 s in fp32). Tests of the bf16 or full-width path set those fields themselves."""
    ov = {"data.data_dir": str(data_root), "data.image_size": 16, "train.precision": "fp32", "model.width": 16,
          "data.train_fraction": 0.004, "data.test_fraction": 0.01, "eval.train_fraction": 0.004, "optim.batch_size": 16, "train.steps_per_epoch": 2, "train.progress": False,
          "eval.linear_epochs": 2, "eval.official_epochs": 1, "eval.forward_transfer": False, "method.proj_hidden": 64, "method.proj_out": 32, "train.log_every": 1}
    ov.update(extra)
    return ov
