"""The suite cleans up after itself: temporary files go to one private folder per session (tests/conftest.py),
whose leftovers fail the session; pytest keeps only failed tests' tmp_path folders (pytest.ini)."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _conftest():
    return sys.modules["tests.conftest"]  # the instance pytest loaded (importing it again would make a second folder)


def test_temporary_files_go_to_the_session_folder_in_this_process_and_in_children():
    session_tmp = str(_conftest().SESSION_TMP)
    assert tempfile.gettempdir() == session_tmp and os.environ["TMPDIR"] == session_tmp
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                           capture_output=True, text=True, timeout=60)
    assert child.stdout.strip() == session_tmp
    cache = Path(os.environ["FASTPNR_CACHE"])
    if cache.name.startswith("fastpnr-test-cache-"):  # the suite's own cache (no $FASTPNR_CACHE given): removed with it
        assert cache.parent == Path(session_tmp)


def test_leftovers_name_what_a_test_left_and_ignore_third_party_exit_cleanups(tmp_path):
    for name in ("fastpnr-bench-x", "run.beton", "pymp-1a2b", "matplotlib-xyz"):
        (tmp_path / name).mkdir()
    assert _conftest().leftovers(tmp_path) == ["fastpnr-bench-x", "run.beton"]


def test_pytest_keeps_only_failed_tests_tmp_path_and_registers_slow(pytestconfig):
    ini = configparser.ConfigParser()
    ini.read(ROOT / "pytest.ini")
    assert ini["pytest"]["tmp_path_retention_policy"] == "failed"
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"
    assert any(m.startswith("slow:") for m in pytestconfig.getini("markers"))


def test_two_torch_threads_on_a_quiet_machine_one_when_every_core_is_busy():
    threads = _conftest().torch_threads
    spin = dict(passive=False)  # OpenMP threads that spin while they wait: the cores the load leaves free
    assert threads(cores=2, load=0.3, own=1, **spin) == 2 and threads(cores=2, load=2.2, own=2, **spin) == 2
    assert threads(cores=2, load=1.3, own=0, **spin) == 1 and threads(cores=2, load=2.5, own=1, **spin) == 1
    assert threads(cores=2, load=13.0, own=2, **spin) == 1 and threads(cores=1, load=0.0, own=1, **spin) == 1
    assert threads(cores=16, load=4.0, own=2, **spin) == 14
    assert threads(cores=2, load=13.0, own=2, passive=True) == 2  # sleeping waiters: every core (BENCHMARKS.md)
