"""Multi-process training (fastpnr.distributed): 2 CPU processes over gloo, as torchrun would start them.

The proof of the design is ``test_two_ranks_equal_one_process``: a 2-rank run with global batch B has the same
per-step losses, final weights and accuracy matrix as one process with batch B.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import tiny_overrides

RUN_TIMEOUT_S = 600


# ------------------------------------------------------------------------------------------------ harness
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, target, args, report):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from fastpnr import distributed

    try:
        target(rank, *args)
    except BaseException as e:  # noqa: BLE001 - reported to the test
        Path(report).with_suffix(f".rank{rank}").write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise
    finally:
        distributed.shutdown()


def run_ranks(world: int, target, *args, report_dir: Path, timeout: float = RUN_TIMEOUT_S) -> list:
    """Run ``target(rank, *args)`` in ``world`` spawned processes with the torchrun environment; exit codes."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    report = str(report_dir / "error")
    procs = [ctx.Process(target=_entry, args=(r, world, port, target, args, report)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.time() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.time()))
    codes = []
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            codes.append("hung")
        else:
            codes.append(p.exitcode)
    return codes


def errors(report_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(report_dir.glob("error.rank*")))


def _train(rank, overrides, out, stop_after_epochs=None, resume=False):
    from fastpnr.config import build_config
    from fastpnr.continual import ContinualRun, resume_run

    if resume:
        resume_run(out, log=lambda *a: None)
        return
    cfg = build_config("smoke", overrides)
    ContinualRun(cfg, out, log=lambda *a: None).fit(stop_after_epochs=stop_after_epochs)


def equivalence_overrides(data_root, **extra) -> dict:
    """Tiny, exact: fp32, deterministic, 2 tasks x 2 epochs x 5 steps = 20 steps (10 with PNR active)."""
    return tiny_overrides(data_root, **{"train.device": "cpu", "train.precision": "fp32", "train.deterministic": True,
                                        "train.steps_per_epoch": 5, "optim.epochs": 2, "train.threads": 1, **extra})


def step_losses(run: Path) -> np.ndarray:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return np.array([e.value for e in acc.Scalars("train/loss")])


def final_weights(run: Path, num_tasks: int = 2) -> dict:
    return torch.load(run / f"task{num_tasks - 1}.pt", weights_only=False)["method"]


def assert_same_run(a: Path, b: Path, rtol: float = 1e-4):
    la, lb = step_losses(a), step_losses(b)
    assert len(la) == len(lb) >= 20
    np.testing.assert_allclose(lb, la, rtol=rtol)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if wa[k].is_floating_point():
            torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(wa[k], wb[k]), k
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma["accuracy_matrix"] == mb["accuracy_matrix"]


# ------------------------------------------------------------------------------------------------ the proof
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_two_ranks_equal_one_process(data_root, tmp_path, method):
    ov = equivalence_overrides(data_root, method=method, regularizer="pnr")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_ranks(1, _train, ov, str(one), report_dir=tmp_path) == [0], errors(tmp_path)
    assert run_ranks(2, _train, ov, str(two), report_dir=tmp_path) == [0, 0], errors(tmp_path)
    assert_same_run(one, two)
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == [2, 2] and metrics["per_rank_batch_size"] == [8, 8]
    # and the losses really depend on the global batch: per-rank BN and local negatives give other numbers
    three = tmp_path / "local"
    assert run_ranks(2, _train, {**ov, "dist.local_loss": True, "dist.sync_batchnorm": False}, str(three),
                     report_dir=tmp_path) == [0, 0], errors(tmp_path)
    assert not np.allclose(step_losses(three), step_losses(one), rtol=1e-4)
