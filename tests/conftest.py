"""Suite-wide fixtures: real data root (skip when absent), an isolated decode cache, tiny run overrides."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# One decode cache per test session, so the suite never depends on (or writes to) the user's cache.
if "FASTPNR_CACHE" not in os.environ:
    import tempfile

    os.environ["FASTPNR_CACHE"] = tempfile.mkdtemp(prefix="fastpnr-test-cache-")

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_root() -> Path:
    from fastpnr.data import resolve_data_root

    root = resolve_data_root()
    if not (root / "cifar10").is_dir():
        pytest.skip(f"real datasets not found at {root} (set $FASTPNR_DATA)")
    return root


def tiny_overrides(data_root, **extra) -> dict:
    """A 2-task CIFAR-10 run of a few seconds: 16 px images, 2 steps per epoch, small heads."""
    ov = {"data.data_dir": str(data_root), "data.image_size": 16, "data.train_fraction": 0.004, "data.test_fraction": 0.01,
          "eval.train_fraction": 0.004, "optim.batch_size": 16, "train.steps_per_epoch": 2, "train.progress": False,
          "eval.linear_epochs": 2, "eval.official_epochs": 1, "method.proj_hidden": 64, "method.proj_out": 32, "train.log_every": 1}
    ov.update(extra)
    return ov
