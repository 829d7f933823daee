"""Fixtures for the data tests: the shared real-data root (skip when absent) and a per-session cache."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastpnr.data import resolve_data_root


@pytest.fixture(scope="session")
def shared_root() -> Path:
    root = resolve_data_root()
    if not (root / "cifar10").is_dir():
        pytest.skip(f"real datasets not found at {root} (set $FASTPNR_DATA)")
    return root


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fastpnr-cache")
