"""Multi-process training (fastpnr.system.distributed): 2 CPU processes over gloo, as torchrun would start them.

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
    from fastpnr.system import distributed

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
    """One rank of ``fastpnr train`` (or ``--resume``), silent."""
    from fastpnr.config import build_config
    from fastpnr.train.continual import ContinualRun, resume_run

    if resume:
        resume_run(out, log=lambda *a: None)
        return
    cfg = build_config("smoke", overrides)
    ContinualRun(cfg, out, log=lambda *a: None).fit(stop_after_epochs=stop_after_epochs)


def equivalence_overrides(data_root, **extra) -> dict:
    """Tiny, exact: float64, deterministic, 2 tasks x 10 steps = 20 steps (10 with PNR active).

    float64 (train.precision fp64), so that the test sees the implementation, not rounding: 2 ranks sum the batch
    in another order than one process, and in float32 such differences (~1e-7 at step 1) grow with every step (the
    dynamics are chaotic: relative loss differences at step 20 were 7e-5 to 2e-4 for BYOL-PNR at lr 1e-4, and a
    ReLU input within rounding of zero flips its gradient), so no tolerance below the signal was sound. In float64
    the rounding is ~1e-16 and stays far below the tolerances after 20 steps (see ``assert_same_run``). A semantic
    difference shows from the first step (before GSG permuted the global batch: 1.5e-2 at step 1)."""
    return rank_overrides(data_root, **{"train.precision": "fp64", "train.deterministic": True,
                                        "train.steps_per_epoch": 10, "data.train_fraction": 0.008, "optim.lr": 0.0001,
                                        "optim.classifier_lr": 0.003, **extra})


def rank_overrides(data_root, **extra) -> dict:
    """A tiny run for 1-thread CPU ranks, its evaluation cut to what the tests compare (no random-init pass, one
    probe fit)."""
    from tests.conftest import tiny_overrides  # here, not at import: spawned ranks must not run conftest's setup

    return tiny_overrides(data_root, **{"train.device": "cpu", "train.threads": 1, "eval.forward_transfer": False,
                                        "eval.linear_seeds": 1, **extra})


def step_losses(run: Path, term: str = "loss") -> np.ndarray:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return np.array([e.value for e in acc.Scalars(f"train/{term}")])


def final_weights(run: Path, num_tasks: int = 2) -> dict:
    return torch.load(run / f"task{num_tasks - 1}.pt", weights_only=False)["method"]


# TensorBoard stores scalars as float32: two float64 losses that differ by ~1e-14 round to the same float32 or to
# neighbours, at most one float32 ulp apart (2**-23 of the value); two ulps of room.
TB_LOSS_RTOL = 2.0 ** -22
# float64 weights after 20 steps: 2 ranks vs one process differed by at most 2e-13 of their size, one process at 2
# vs 1 torch threads by 3e-13 (BYOL-PNR, equivalence_overrides, measured 2026-12-03 on 2 loaded cores); 1e-9 leaves
# 3000x room, while float32 rounding alone moved them by 1e-4 (a semantic difference: 1e-2 from the first step).
WEIGHT_TOL = dict(rtol=1e-9, atol=1e-9)


def assert_same_run(a: Path, b: Path, min_steps: int = 20):
    """Runs ``a`` and ``b`` (train.precision fp64) have the same step losses, final weights and accuracy matrix."""
    for term in ("loss", "probe"):  # the SSL loss, and the online probe's (trained in fp64 too)
        la, lb = step_losses(a, term), step_losses(b, term)
        assert len(la) == len(lb) >= min_steps
        np.testing.assert_allclose(lb, la, rtol=TB_LOSS_RTOL, atol=0, err_msg=term)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    assert all(v.dtype == torch.float64 for v in wa.values() if v.is_floating_point())  # the run was float64
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], **WEIGHT_TOL, msg=lambda m, k=k: f"{k}: {m}")
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma["accuracy_matrix"] == mb["accuracy_matrix"]


# ------------------------------------------------------------------------------------------------ the proof
EXTRA = {"mocov2plus": {"method.queue_size": 64}, "byol": {"method.pred_hidden": 32},
         "byol_gsg": {"method.pred_hidden": 32}}


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_two_ranks_equal_one_process(data_root, tmp_path, method):
    """The acceptance property: 20 steps of a PNR run (float64), the same losses, weights and accuracy matrix."""
    ov = equivalence_overrides(data_root, method=method, regularizer="pnr",
                               **{"regularizer.distill_hidden": 32, **EXTRA.get(method, {})})
    _assert_two_ranks_equal_one_process(ov, tmp_path)


STRATEGY_EXTRA = {"pnr": {"regularizer.distill_hidden": 32}, "cassle": {"regularizer.distill_hidden": 32}, "pfr": {},
                  "er": {"regularizer.buffer_size": 16}, "lump": {"regularizer.buffer_size": 16}, "pocon": {}}


@pytest.mark.slow
@pytest.mark.parametrize("method,reg", [("mocov2plus", "pnr"), ("simclr", "cassle"), ("barlow", "pnr"),
                                        ("vicreg", "pnr"), ("byol_gsg", "pnr"), ("barlow", "pfr"), ("simclr", "er"),
                                        ("byol", "lump"), ("barlow", "pocon")])
def test_two_ranks_equal_one_process_over_the_first_steps(data_root, tmp_path, method, reg):
    """The other methods (and CaSSLe), 2 tasks x 2 steps (float64): a semantic difference shows at once (before GSG
    permuted the global batch: 1.5e-2 at step 1); 20 steps would cost a minute each."""
    ov = equivalence_overrides(data_root, method=method, regularizer=reg,
                               **{**STRATEGY_EXTRA[reg], "train.steps_per_epoch": 2, **EXTRA.get(method, {})})
    _assert_two_ranks_equal_one_process(ov, tmp_path, min_steps=4)


@pytest.mark.slow
def test_two_ranks_with_the_ffcv_loader_equal_one_process(data_root, tmp_path):
    """Each rank's ffcv loader reads only its rows and draws the global batch's augmentations (crop="device"), so a
    2-rank run is one process's run. data.num_workers keeps its default (4: more threads than numba may have here)."""
    pytest.importorskip("ffcv")
    ov = equivalence_overrides(data_root, method="simclr", regularizer="pnr",
                               **{"regularizer.distill_hidden": 32, "train.steps_per_epoch": 2, "data.loader": "ffcv"})
    _assert_two_ranks_equal_one_process(ov, tmp_path, min_steps=4)


@pytest.mark.slow
def test_two_ranks_train_with_the_dali_loader(data_root, tmp_path):
    """dali under torchrun: each rank decodes its rows (augmentations seeded per rank, so no equality to compare)."""
    pytest.importorskip("nvidia.dali")
    ov = rank_overrides(data_root, **{"data.loader": "dali"})
    assert run_ranks(2, _train, ov, str(tmp_path / "run"), report_dir=tmp_path) == [0, 0], errors(tmp_path)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == [2, 2] and len(metrics["accuracy_matrix"]) == 2


def _assert_two_ranks_equal_one_process(ov: dict, tmp_path: Path, min_steps: int = 20):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_ranks(1, _train, ov, str(one), report_dir=tmp_path) == [0], errors(tmp_path)
    assert run_ranks(2, _train, ov, str(two), report_dir=tmp_path) == [0, 0], errors(tmp_path)
    assert_same_run(one, two, min_steps=min_steps)
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == [2, 2] and metrics["per_rank_batch_size"] == [8, 8]


# ------------------------------------------------------------------------------------------------ the pieces
def _gather_grads(rank, world, out):
    """SimCLR loss on gathered embeddings of a linear layer + a GlobalBatchNorm; averaged parameter grads."""
    from fastpnr.system.distributed import convert_batchnorm, from_env
    from fastpnr.losses import simclr_loss

    dist = from_env(torch.device("cpu"))
    model = _tiny_model().double()
    convert_batchnorm(model)
    x1, x2 = (x.double() for x in _tiny_batch())
    rows = dist.shard(x1.shape[0])
    a1, a2 = x1[rows].clone().requires_grad_(), x2[rows].clone().requires_grad_()
    z1, z2 = dist.loss_batch(model(a1), model(a2))
    loss = simclr_loss(z1, z2, temperature=0.5)
    loss.backward()
    dist.average_gradients(list(model.parameters()))
    # eval features: whole batches dealt round-robin, gathered back in order (11 rows, batches of 3: 2 + 2 batches)
    rows = dist.map_batches(lambda idx: torch.as_tensor(idx, dtype=torch.float32)[:, None].repeat(1, 2),
                            np.arange(100, 111), 3)
    assert torch.equal(rows[:, 0], torch.arange(100, 111, dtype=torch.float32))
    dist.local_loss = True  # the official per-GPU semantics: the loss sees the local rows only
    assert dist.loss_batch(a1) is a1
    dist.local_loss = False
    if rank == 0:
        torch.save({"loss": loss.detach(), "grads": [p.grad for p in model.parameters()],
                    "running_var": model[1].running_var}, out)
    torch.save({"a1": a1.grad, "a2": a2.grad}, f"{out}.inputs{rank}")


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 4))


def _tiny_batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def test_gather_with_grad_and_global_batchnorm_match_one_process(tmp_path):
    from fastpnr.losses import simclr_loss

    out = tmp_path / "ranks.pt"
    assert run_ranks(2, _gather_grads, 2, str(out), report_dir=tmp_path, timeout=300) == [0, 0], errors(tmp_path)
    model = _tiny_model().double()  # the one-process reference: plain BatchNorm over the whole batch
    x1, x2 = (x.double().requires_grad_() for x in _tiny_batch())
    ref = simclr_loss(model(x1), model(x2), temperature=0.5)
    ref.backward()
    got = torch.load(out, weights_only=False)
    # float64: the ranks sum the rows in another order, ~1e-16 per sum over a few sums of 8 rows; 1e-10 leaves
    # 1e5 room (float32 needed 1e-5: its rounding is 1e-7), while BatchNorm over a rank's own rows is off by 1e-1.
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["loss"], ref.detach(), **tol)
    for g, p in zip(got["grads"], model.parameters()):
        torch.testing.assert_close(g, p.grad, **tol)
    torch.testing.assert_close(got["running_var"], model[1].running_var, **tol)
    # each rank's inputs get W x the reference gradient of its rows (every rank computed the whole loss)
    for r in range(2):
        inputs = torch.load(f"{out}.inputs{r}", weights_only=False)
        torch.testing.assert_close(inputs["a1"], 2 * x1.grad[4 * r:4 * (r + 1)], **tol)
        torch.testing.assert_close(inputs["a2"], 2 * x2.grad[4 * r:4 * (r + 1)], **tol)


def _pnr_step(dist, backend):
    """One SimCLR-PNR backward on this rank's rows of ``_tiny_batch`` (a tiny online encoder x -> z, distill
    predictor z -> u, frozen encoder x -> f), gradients averaged over the ranks: (loss, parameter gradients)."""
    from fastpnr.losses import pnr_simclr_loss

    torch.manual_seed(0)
    encoder, predictor, frozen = torch.nn.Linear(6, 5), torch.nn.Linear(5, 5), torch.nn.Linear(6, 5)
    x1, x2 = _tiny_batch()
    rows = dist.shard(x1.shape[0])
    x1, x2 = x1[rows], x2[rows]
    z1, z2 = encoder(x1), encoder(x2)
    with torch.no_grad():
        f1, f2 = frozen(x1), frozen(x2)
    z1, z2, u1, u2, f1, f2 = dist.loss_batch(z1, z2, predictor(z1), predictor(z2), f1, f2)
    loss = pnr_simclr_loss(z1, z2, u1, u2, f1, f2, temperature=0.2, backend=backend)
    loss.backward()
    params = [*encoder.parameters(), *predictor.parameters()]
    dist.average_gradients(params)
    return loss.detach(), [p.grad for p in params]


def _kernel_grads(rank, world, out):
    """SimCLR-PNR through the fused kernel (Triton's interpreter on CPU) on gathered keys and pseudo-negatives."""
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (it is imported lazily by the loss)
    from fastpnr.system.distributed import from_env

    loss, grads = _pnr_step(from_env(torch.device("cpu")), "triton")
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, out)


def test_the_fused_kernel_on_gathered_keys_matches_one_process(tmp_path):
    """The Triton InfoNCE sees the global batch's keys and pseudo-negatives; its gradients reach the owner ranks."""
    from fastpnr.system.distributed import SINGLE

    pytest.importorskip("triton")
    out = tmp_path / "ranks.pt"
    assert run_ranks(2, _kernel_grads, 2, str(out), report_dir=tmp_path, timeout=300) == [0, 0], errors(tmp_path)
    ref_loss, ref_grads = _pnr_step(SINGLE, "torch")
    got = torch.load(out, weights_only=False)
    torch.testing.assert_close(got["loss"], ref_loss, rtol=1e-5, atol=1e-6)
    for g, r in zip(got["grads"], ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def _fake_source(n=40, size=12):
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    return SimpleNamespace(images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                           labels=np.arange(n) % 5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_gpu_loader_shards_partition_the_global_batch_with_its_augmentations():
    from loaders import ViewConfig, make_loader
    from tests.loaders.utils import assert_shards_partition

    src = _fake_source()
    views = [ViewConfig(size=8, crop_scale=(0.2, 1.0), blur_prob=1.0, solarize_prob=0.2, mean=src.mean, std=src.std)] * 2
    assert_shards_partition(lambda shard: make_loader("gpu", src, 8, 2, "cpu", seed=3, view_configs=views,
                                                      subset=np.arange(3, 40), shard=shard))


def test_torchvision_loader_shards_partition_the_global_batch():
    from loaders import make_loader
    from tests.loaders.utils import assert_shards_partition

    src = _fake_source()
    # per-sample transforms seeded from (seed, epoch, index) inside the dataset: a random flip of the PIL image
    flip = lambda img: torch.from_numpy(np.array(img)).permute(2, 0, 1).float().flip(-1 if torch.rand(()) < 0.5 else 0)  # noqa: E731
    assert_shards_partition(lambda shard: make_loader("torchvision", src, 8, 2, "cpu", seed=3, transforms=[flip, flip],
                                                      num_workers=0, subset=np.arange(3, 40), shard=shard))


def test_batch_not_divisible_by_world_size_is_one_line():
    from fastpnr.system.distributed import Dist
    from fastpnr.errors import ConfigError

    d = Dist()
    d.world_size = 3
    with pytest.raises(ConfigError, match=r"optim.batch_size=16 is invalid with 3 processes"):
        d.local_batch(16)


# ------------------------------------------------------------------------------------------------ runs
def _train_rank0_folder_only(rank, overrides, out, stop_after_epochs=None):
    """Rank r > 0 is handed its own run folder, which must stay absent: only rank 0 writes run files."""
    _train(rank, overrides, out if rank == 0 else f"{out}-rank{rank}", stop_after_epochs)


@pytest.mark.slow
def test_resume_across_world_sizes_and_only_rank_0_writes(data_root, tmp_path):
    ov = equivalence_overrides(data_root, method="simclr", regularizer="pnr", **{"train.steps_per_epoch": 3,
                               "optim.epochs": 2})
    ref, two_one, one_two = tmp_path / "ref", tmp_path / "two_one", tmp_path / "one_two"
    assert run_ranks(1, _train, ov, str(ref), report_dir=tmp_path) == [0], errors(tmp_path)
    # 2 ranks, stopped after the first epoch (mid-task: optimizer state in the checkpoint), resumed on 1
    assert run_ranks(2, _train_rank0_folder_only, ov, str(two_one), 1, report_dir=tmp_path) == [0, 0], errors(tmp_path)
    assert not Path(f"{two_one}-rank1").exists()
    assert (two_one / "checkpoint.pt").exists() and not (two_one / "metrics.json").exists()
    assert run_ranks(1, _train, ov, str(two_one), None, True, report_dir=tmp_path) == [0], errors(tmp_path)
    # and the reverse: 1 process stopped, resumed on 2 ranks
    assert run_ranks(1, _train, ov, str(one_two), 1, report_dir=tmp_path) == [0], errors(tmp_path)
    assert run_ranks(2, _train, ov, str(one_two), None, True, report_dir=tmp_path) == [0, 0], errors(tmp_path)
    for run in (two_one, one_two):
        assert_same_run(ref, run, min_steps=12)
    assert json.loads((two_one / "metrics.json").read_text())["world_size"] == [1, 1]  # task 0 finished on 1
    assert json.loads((one_two / "metrics.json").read_text())["world_size"] == [2, 2]


def _train_and_die(rank, overrides, out, die_at):
    """Rank 1 kills itself (SIGKILL) at step ``die_at``; rank 0 must stop with one line naming it."""
    from tests.system.rank_faults import die_at_step

    if rank == 1:
        die_at_step(die_at, f"{out}.killed")
    try:
        _train(rank, overrides, out)
    finally:
        Path(f"{out}.stopped{rank}").write_text(repr(time.time()))


@pytest.mark.slow
def test_a_killed_rank_stops_the_other_with_one_line_then_resume_continues(data_root, tmp_path):
    from fastpnr.system.distributed import HEARTBEAT_S

    ov = rank_overrides(data_root, **{"optim.epochs": 2, "dist.timeout_s": 60})
    run = tmp_path / "run"
    codes = run_ranks(2, _train_and_die, ov, str(run), 3, report_dir=tmp_path)
    assert codes[1] == -signal.SIGKILL and codes[0] not in (0, "hung"), codes
    message = (tmp_path / "error.rank0").read_text().splitlines()[0]
    assert message.startswith("PeerFailure: rank 1 stopped") and "--resume" in message
    waited = float((tmp_path / "run.stopped0").read_text()) - float((tmp_path / "run.killed").read_text())
    assert waited < ov["dist.timeout_s"] + 10 * HEARTBEAT_S
    assert run_ranks(1, _train, ov, str(run), None, True, report_dir=tmp_path) == [0], errors(tmp_path)
    assert len(json.loads((run / "metrics.json").read_text())["accuracy_matrix"]) == 2


@pytest.mark.slow
def test_torchrun_max_restarts_resumes_from_the_checkpoint(data_root, tmp_path):
    """torchrun --max-restarts 1: rank 1 dies in the first attempt; the restarted workers find the checkpoint in
    --out and finish the run from it (fastpnr train resumes by itself, no --resume). Before ``attempt_store`` the
    restarted attempt's gloo setup read the dead rank's address from torchrun's shared store in 2 of 3 tries."""
    import subprocess
    import sys

    ov = rank_overrides(data_root, **{"optim.epochs": 2})
    run, marker = tmp_path / "run", tmp_path / "died"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
            "--monitor-interval=0.5", f"--log-dir={tmp_path / 'torchrun'}",
            "-m", "tests.system.rank_faults", "--out", str(run),  # a module: a script would put tests/ first on sys.path
            *[a for k, v in ov.items() for a in (f"--{k}", str(v))]]
    env = {**os.environ, "DIE_MARKER": str(marker), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    assert marker.exists()  # the first attempt did lose rank 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["accuracy_matrix"]) == 2 and metrics["world_size"] == [2, 2]


@pytest.mark.slow
def test_torchrun_bad_input_is_one_error_line_from_rank_0(data_root, tmp_path):
    """2 ranks, a batch larger than the task: one `error:` line (rank 0's), no worker traceback, exit code not 0.
    torchrun's own ChildFailedError summary follows (its process raises it; a worker cannot silence it)."""
    import subprocess
    import sys

    ov = rank_overrides(data_root, **{"optim.batch_size": 4096})
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--log-dir={tmp_path / 'torchrun'}", "-m", "scripts.train", "--out", str(run), *[a for k, v in ov.items() for a in (f"--{k}", str(v))]]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env,
                         cwd=Path(__file__).parents[2])
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode != 0 and len(errors) == 1, out.stderr[-3000:]
    assert errors[0].startswith("error: optim.batch_size=4096 is invalid") and "rank 1" not in out.stderr
    assert "exitcode  : 2" in out.stderr  # rank 0's plain exit, the root cause in torchrun's summary
    worker_frames = [line for line in out.stderr.splitlines() if line.strip().startswith("File ") and "fastpnr" in line
                     and "torch/distributed" not in line]
    assert not worker_frames, out.stderr[-3000:]  # no Python traceback from the ranks
    assert f"out: {run.resolve()}" in out.stdout.splitlines() and "run folder:" not in out.stdout


def test_a_restarted_worker_resumes_only_a_checkpoint_of_its_own_launch(tmp_path, monkeypatch):
    """A restarted torchrun worker must not continue a run that was in --out before its launch (the first attempt
    refused that folder): only a checkpoint stamped with this launch's TORCHELASTIC_RUN_ID is resumed."""
    import importlib

    train = importlib.import_module("scripts.train")
    ckpt = tmp_path / "checkpoint.pt"
    assert not train._written_by_this_launch(ckpt)
    torch.save({"format": 2, "launch_id": "launch-a"}, ckpt)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-b")
    assert not train._written_by_this_launch(ckpt)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "launch-a")
    assert train._written_by_this_launch(ckpt)
    torch.save({"format": 2}, ckpt)  # written outside torchrun (or by an older fastpnr)
    assert not train._written_by_this_launch(ckpt)


def test_ranks_agree_on_a_fresh_token_in_a_store_holding_a_failed_attempts_keys():
    """torchrun's shared store outlives a restart: the ranks of the new attempt must agree on a prefix no key of the
    old attempt lives under, even when rank 0 reads a dead rank's nonce first (it answers every nonce it sees)."""
    import threading

    from fastpnr.system.distributed import _agree_on_token

    store = torch.distributed.HashStore()
    store.set("fastpnr/hello/1", "nonce-of-the-dead-attempt")  # what attempt 0 left behind
    store.set("fastpnr/token/nonce-of-the-dead-attempt", "old-token")
    tokens = {}

    def rank(r, delay):
        time.sleep(delay)
        tokens[r] = _agree_on_token(store, r, 3, timeout_s=10, poll_s=0.01)

    threads = [threading.Thread(target=rank, args=(r, d)) for r, d in ((0, 0.0), (1, 0.2), (2, 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert len(tokens) == 3 and len(set(tokens.values())) == 1 and tokens[0] != "old-token", tokens


def test_a_rank_that_never_joins_is_named_within_the_timeout():
    from fastpnr.system.distributed import PeerFailure, _agree_on_token

    store = torch.distributed.HashStore()
    store.set("fastpnr/hello/1", "nonce-of-the-dead-attempt")
    with pytest.raises(PeerFailure, match=r"^rank 1, 2 did not join within dist.timeout_s=0.3 s"):
        _agree_on_token(store, 0, 3, timeout_s=0.3, poll_s=0.01)
    with pytest.raises(PeerFailure, match=r"^rank 0 did not join within dist.timeout_s=0.3 s"):
        _agree_on_token(store, 2, 3, timeout_s=0.3, poll_s=0.01)
