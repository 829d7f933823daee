"""Fixtures for the data tests: the shared real-data root (skip when absent) and a per-session cache."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_root(data_root) -> Path:
    """The shared real-data root (the suite-wide ``data_root`` fixture skips when it is absent)."""
    return data_root


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """A cache of the data tests' own, empty at first (for tests that watch a decode, then a cache hit)."""
    return tmp_path_factory.mktemp("fastpnr-cache")


@pytest.fixture(scope="session")
def suite_cache() -> Path:
    """The suite's decode cache ($FASTPNR_CACHE, tests/conftest.py): splits decoded once for every test."""
    from fastpnr.data import cache_root

    return cache_root()
