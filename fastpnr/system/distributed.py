"""Multi-process training under torchrun: every distributed concern of fastpnr lives here.

``Dist`` is built from the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a single process gets
the identity version (``SINGLE``), so the rest of the code never asks "am I distributed?". The design makes a run
on W ranks with global batch B compute what one process computes with batch B:

- each global batch is split into W contiguous shards of B / W rows (rank r: rows [r B/W, (r+1) B/W)), so the
  gathered batch is the one-process batch in the same order;
- losses that couple the samples of a batch (SimCLR's negatives, PNR's pseudo-negatives, Barlow's
  cross-correlation, VICReg's variance and covariance) see the gathered global batch (``loss_batch``): an
  all-gather whose backward all-reduces (sums) the gradient and keeps the owner's rows. Every rank computes the
  same global loss L, so rank r's embeddings receive W dL/dz_r;
- per-sample losses (BYOL, SimSiam, MoCo, ...) stay local: their global mean is the mean of the rank means;
- BatchNorm statistics are global (``GlobalBatchNorm``: two differentiable all-reduces of sums);
- after backward the parameter gradients are all-reduced and divided by W (``average_gradients``). Both cases
  above then give exactly dL/dtheta: (1/W) sum_r W dL_r... for the gathered loss, (1/W) sum_r dL_r/dtheta for the
  local ones, and the sum-all-reduce in the BatchNorm backward makes the cross-rank paths add up the same way.

Only rank 0 writes files (``main_only``); evaluation features are extracted in whole eval batches dealt round-robin
to the ranks and gathered (``map_batches``), so each batch is computed exactly as in one process.
"""
from __future__ import annotations

import datetime
import os
import threading
import time
import uuid
from contextlib import contextmanager

import numpy as np
from functools import partial

import torch
import torch.distributed as tdist
from torch import nn

from fastpnr.errors import ConfigError, FastPNRError
from .precision import upcast

HEARTBEAT_S = 2.0  # how often each rank stamps the store; a rank silent for 3 of these is reported as gone


class PeerFailure(FastPNRError):
    """Another rank stopped (killed, crashed or unreachable)."""


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun (or any launcher that sets them), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def is_elastic_restart() -> bool:
    """True in a worker that torchrun restarted (``--max-restarts``) after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def launch_id() -> str | None:
    """The torchrun invocation's id (``--rdzv_id``; a fresh uuid with ``--standalone``), the same in its restarts."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


# A rank other than 0 that stops with a FastPNRError waits this long for torchrun to stop it: rank 0 raises the same
# error (bad input is the same on every rank), prints it and exits, and torchrun then ends the other workers (within
# its --monitor-interval, 0.1 s). Only an error rank 0 never raises (this rank's own) is printed, after the wait.
ERROR_GRACE_S = 30.0


def report_error(exc: Exception, stream=None, grace_s: float = ERROR_GRACE_S, sleep=time.sleep) -> None:
    """Print ``error: <exc>`` once per launch: on rank 0 (or a single process) at once; on another rank only if
    torchrun has not stopped it ``grace_s`` later (then prefixed with its rank), except a ``PeerFailure`` (another
    rank stopped, possibly rank 0), which every rank that sees it prints at once.

    Nothing goes into torchrun's error file (``TORCHELASTIC_ERROR_FILE``): its summary would then repeat the line
    for every rank and add three lines of warnings about the file's format."""
    import sys

    stream = stream or sys.stderr
    env = torchrun_env()
    rank = env[0] if env is not None and env[1] > 1 else 0
    if rank != 0 and not isinstance(exc, PeerFailure):  # a PeerFailure is this rank's own news (rank 0 may be gone)
        sleep(grace_s)
    print(f"error: {exc}" if rank == 0 else f"error: rank {rank}: {exc}", file=stream, flush=True)


class Dist:
    """The identity: one process. ``ProcessGroup`` below is the real thing; both have the same methods."""

    rank, world_size, local_rank = 0, 1, 0
    local_loss = False
    barlow_gpus = None  # dist.barlow_gpus: Barlow Twins' C as the official code on that many GPUs; None: the exact one

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return "1 process"

    # -- batches -------------------------------------------------------------------------------------
    def local_batch(self, batch_size: int) -> int:
        """Rows per rank of a global batch; a one-line error when the world size does not divide it."""
        if batch_size % self.world_size:
            raise ConfigError(f"optim.batch_size={batch_size} is invalid with {self.world_size} processes; allowed: "
                              f"a multiple of the world size {self.world_size} (it is the global batch)")
        return batch_size // self.world_size

    def shard(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of ``batch_size`` rows."""
        b = self.local_batch(batch_size)
        return slice(self.rank * b, (self.rank + 1) * b)

    # -- collectives (identity here) -------------------------------------------------------------------
    def loss_batch(self, *tensors: torch.Tensor):
        """The global batch of each tensor for a batch-coupled loss (gradients flow back to their owner rank);
        the local tensors with ``dist.local_loss`` (the official per-GPU semantics) or in one process."""
        return tensors if len(tensors) > 1 else tensors[0]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The global batch of ``x`` (no gradient): what a queue enqueues."""
        return x

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over the processes (no gradient), a new tensor."""
        return x.clone()

    def barlow_batch(self, *tensors: torch.Tensor):
        """The rows a Barlow Twins loss (the method's, PNR's positive term, CaSSLe's decorrelative distiller) sees:
        the global batch (``loss_batch``), or this process's rows when ``dist.barlow_gpus`` computes C as the official
        DDP code (``barlow_correlation``)."""
        if self.barlow_gpus is None:
            return self.loss_batch(*tensors)
        return tensors if len(tensors) > 1 else tensors[0]

    def barlow_correlation(self):
        """``barlow_loss``'s ``correlation``: None (C of the global batch, exact gradients) or the official DDP C on
        ``dist.barlow_gpus`` GPUs (``losses.barlow.official_ddp_correlation``: every Barlow gradient 1/gpus)."""
        if self.barlow_gpus is None:
            return None
        from fastpnr.losses.barlow import official_ddp_correlation

        return partial(official_ddp_correlation, gpus=self.barlow_gpus, world_size=self.world_size,
                       all_reduce_sum=self.all_reduce_sum if self.enabled else None)

    def average_gradients(self, params) -> None:
        """All-reduce the gradients of ``params`` and divide by the world size (no-op in one process)."""

    def mean_logs(self, logs: dict) -> dict:
        """{name: host float}, averaged over ranks (the global-batch value of every logged loss term)."""
        return {k: float(v) for k, v in logs.items()}

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank (a stop signal seen by one rank stops all at the same step)."""
        return flag

    def broadcast_module(self, module: nn.Module) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""

    def broadcast_object(self, obj):
        return obj

    def barrier(self) -> None:
        pass

    @contextmanager
    def main_first(self):
        """Rank 0 runs the body first (fills caches, writes a .beton), then the others."""
        yield

    def map_batches(self, fn, indices: np.ndarray, batch_size: int) -> torch.Tensor:
        """``fn(indices)`` (rows in order); sharded by whole batches across ranks and gathered in ``ProcessGroup``."""
        return fn(indices)

    def main_only(self, fn):
        """``fn`` on rank 0, a no-op returning None elsewhere: every run file goes through this."""
        return fn

    def failure(self, exc: BaseException) -> BaseException:
        """What to raise for ``exc`` (a peer failure becomes one line naming the rank)."""
        return exc

    @contextmanager
    def peer_failures_named(self):
        """The body's exception, re-raised as one line naming the rank when a peer that stopped caused it."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - re-raised, as a PeerFailure when a peer is gone
            failure = self.failure(e)
            if failure is e:
                raise
            raise failure from None

    def close(self) -> None:
        pass


SINGLE = Dist()


class ProcessGroup(Dist):
    """torch.distributed's default process group: NCCL on CUDA, gloo on CPU."""

    def __init__(self, rank: int, world_size: int, local_rank: int, device: torch.device, timeout_s: float,
                 local_loss: bool = False):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = device
        self.local_loss = local_loss
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self.owns_group = not tdist.is_initialized()
        if self.owns_group:
            kw = {"device_id": device} if device.type == "cuda" else {}
            store = attempt_store(rank, world_size, timeout_s)
            if store is not None:
                kw.update(store=store, rank=rank, world_size=world_size)
            tdist.init_process_group(self.backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
        self.store = _default_store()
        self._stop = threading.Event()
        self._beat = None
        if self.store is not None:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="fastpnr-heartbeat")
            self._beat.start()

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} ({self.backend}, {self.device})"

    # -- collectives -----------------------------------------------------------------------------------
    def loss_batch(self, *tensors):
        if self.local_loss:
            return Dist.loss_batch(self, *tensors)
        out = tuple(_GatherWithGrad.apply(t) if t.requires_grad else self.gather(t) for t in tensors)
        return out if len(out) > 1 else out[0]

    def all_reduce_sum(self, x):
        x = x.detach().clone()
        tdist.all_reduce(x)
        return x

    def gather(self, x):
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        tdist.all_gather(parts, x.detach().contiguous())
        return torch.cat(parts)

    def average_gradients(self, params) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        # one flat buffer per dtype: a single collective instead of one per tensor
        for dtype in sorted({g.dtype for g in grads}, key=str):
            group = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in group])
            tdist.all_reduce(flat)
            flat.div_(self.world_size)
            torch._foreach_copy_(group, [t.view_as(g) for t, g in zip(flat.split([g.numel() for g in group]), group)])

    def mean_logs(self, logs):
        names = sorted(logs)
        values = torch.stack([logs[k].detach().double().reshape(()) for k in names])  # fp64 runs log fp64
        tdist.all_reduce(values)
        return dict(zip(names, (values / self.world_size).tolist()))

    def any_rank(self, flag):
        t = torch.tensor([float(flag)], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_module(self, module):
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                tdist.broadcast(t.data, src=0)

    def broadcast_object(self, obj):
        box = [obj]
        tdist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def barrier(self):
        tdist.barrier()

    @contextmanager
    def main_first(self):
        # A store wait instead of a barrier: rank 0's first decode of a large dataset may outlast any collective timeout.
        key = f"fastpnr/main_first/{_next_id()}"
        if self.is_main:
            try:
                yield
            finally:
                self.store.set(key, "done")
        else:
            while not self.store.check([key]):
                time.sleep(0.5)
            yield

    def map_batches(self, fn, indices, batch_size):
        indices = np.asarray(indices)
        n = len(indices)
        starts = np.arange(0, n, batch_size)
        mine = starts[self.rank::self.world_size]  # whole eval batches, dealt round-robin: each computed as in one process
        local_idx = np.concatenate([indices[s:s + batch_size] for s in mine]) if len(mine) else indices[:0]
        local = fn(local_idx)
        # pad to the largest share, gather, then put the rows back in the one-process order
        sizes = [sum(min(batch_size, n - s) for s in starts[r::self.world_size]) for r in range(self.world_size)]
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[:len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(parts, padded)
        rows = []
        for s in starts:  # batch k sits on rank k % W, after that rank's k // W earlier (full) batches
            k = s // batch_size
            at = k // self.world_size * batch_size
            rows.append(parts[k % self.world_size][at:at + min(batch_size, n - s)])
        return torch.cat(rows) if n else local

    def main_only(self, fn):
        return fn if self.is_main else _nothing

    # -- faults ----------------------------------------------------------------------------------------
    def _heartbeat(self):
        while not self._stop.is_set():
            try:
                self.store.set(f"fastpnr/alive/{self.rank}", repr(time.time()))
            except Exception:  # noqa: BLE001 - the store host is gone; failure() reports it
                return
            self._stop.wait(HEARTBEAT_S)

    def silent_ranks(self) -> list[int]:
        """Ranks whose heartbeat is older than 3 periods (the store's host gone: every other rank)."""
        now, silent = time.time(), []
        for r in range(self.world_size):
            if r == self.rank:
                continue
            try:
                self.store.set_timeout(datetime.timedelta(seconds=5))
                stamp = float(self.store.get(f"fastpnr/alive/{r}"))
            except Exception:  # noqa: BLE001 - no store: its host (rank 0's launcher or rank 0) is gone
                return [0] if self.rank != 0 else [r for r in range(1, self.world_size)]
            if now - stamp > 3 * HEARTBEAT_S:
                silent.append(r)
        return silent

    def failure(self, exc):
        if isinstance(exc, FastPNRError) or self.store is None:
            return exc
        deadline = time.time() + 4 * HEARTBEAT_S
        silent = self.silent_ranks()
        while not silent and time.time() < deadline and _looks_like_peer_loss(exc):
            time.sleep(HEARTBEAT_S / 2)
            silent = self.silent_ranks()
        if not silent:
            return exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        names = ", ".join(map(str, silent))
        return PeerFailure(f"rank {names} stopped (seen by rank {self.rank}: {first}); the run folder's last "
                           "checkpoint is intact: continue with --resume RUN_DIR")

    def close(self):
        # The heartbeat must not be inside a C++ store call when the group (and the store) go away: a daemon thread
        # caught there at interpreter exit can abort the process ("terminate called without an active exception").
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=2 * HEARTBEAT_S)
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()
        self.store = None


def _nothing(*args, **kwargs):
    return None


# ------------------------------------------------------------------------------------------------ elastic restarts
def attempt_store(rank: int, world_size: int, timeout_s: float):
    """The store this attempt's process group should use, or None for torch's own ``env://`` rendezvous.

    torchrun's c10d rendezvous shares its agent's TCPStore with the workers (``TORCHELASTIC_USE_AGENT_STORE``), and
    that store outlives ``--max-restarts`` restarts with the keys of the failed attempt in it: a restarted rank can
    read a dead peer's address and fail with "connectFullMesh ... Connection refused" (gloo) or a stale NCCL id
    (pytorch/pytorch#135712). ``TORCHELASTIC_RESTART_COUNT`` cannot name the attempt (each node's agent counts its
    own restarts), so the ranks agree on a fresh key prefix through the store itself (``_agree_on_token``).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    timeout = datetime.timedelta(seconds=timeout_s)
    store = tdist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                           timeout=timeout)
    return tdist.PrefixStore(f"fastpnr/attempt/{_agree_on_token(store, rank, world_size, timeout_s)}", store)


def _agree_on_token(store, rank: int, world_size: int, timeout_s: float, poll_s: float = 0.05) -> str:
    """A token fresh to this attempt, the same on every rank, agreed through a store that may hold older attempts'
    keys: rank r > 0 posts a fresh nonce, rank 0 answers every nonce it sees under a key named by that nonce (so no
    old answer can be read), and waits for an acknowledgement keyed by its own fresh token from every rank."""
    deadline = time.time() + timeout_s
    if rank != 0:
        nonce = uuid.uuid4().hex
        store.set(f"fastpnr/hello/{rank}", nonce)
        try:
            store.wait([f"fastpnr/token/{nonce}"], datetime.timedelta(seconds=timeout_s))
        except Exception as e:  # noqa: BLE001 - torch raises DistStoreError; one line for the user
            raise PeerFailure(f"rank 0 did not join within dist.timeout_s={timeout_s:g} s "
                              f"({type(e).__name__}); is every node started?") from None
        token = store.get(f"fastpnr/token/{nonce}").decode()
        store.set(f"fastpnr/ack/{token}/{rank}", "1")
        return token
    token, answered = uuid.uuid4().hex, set()
    hellos = [f"fastpnr/hello/{r}" for r in range(1, world_size)]
    acks = [f"fastpnr/ack/{token}/{r}" for r in range(1, world_size)]
    while not store.check(acks):
        for key in hellos:
            nonce = store.get(key).decode() if store.check([key]) else None
            if nonce is not None and nonce not in answered:
                store.set(f"fastpnr/token/{nonce}", token)
                answered.add(nonce)
        if time.time() > deadline:
            missing = [r for r, k in enumerate(acks, 1) if not store.check([k])]
            raise PeerFailure(f"rank {', '.join(map(str, missing))} did not join within dist.timeout_s={timeout_s:g} s")
        time.sleep(poll_s)
    return token


_COUNTER = [0]


def _next_id() -> int:
    _COUNTER[0] += 1
    return _COUNTER[0]


def _default_store():
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # noqa: BLE001 - no store: no heartbeats, failures reported as torch reports them
        return None


def _looks_like_peer_loss(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(w in text for w in ("connection", "closed", "reset", "timed out", "timeout", "broken pipe", "nccl",
                                   "distbackend", "peer"))


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along rows; backward: all-reduce (sum) the gradient of the global batch, keep this rank's rows."""

    @staticmethod
    def forward(ctx, x):
        world, rank = tdist.get_world_size(), tdist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        tdist.all_gather(parts, x.contiguous())
        ctx.rows = slice(rank * x.shape[0], (rank + 1) * x.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        return grad[ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward is the same sum (each rank's input reaches every rank's output)."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        tdist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        tdist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks (the identity in one process)."""
    if not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
        return x
    return _AllReduceSum.apply(x)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (any backend: gloo on CPU too).

    Same parameters and buffers (state_dict keys) as BatchNorm1d/2d, so checkpoints do not depend on it. Mean and
    biased variance come from two differentiable all-reduces of per-channel sums (centred second pass, as a
    one-process BatchNorm computes them); the running variance is the unbiased one over the global count.
    """

    def _check_input_dim(self, x):
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D-5D input (got {x.dim()}D input)")

    def forward(self, x):
        if not self.training or not (tdist.is_available() and tdist.is_initialized()) or tdist.get_world_size() == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = upcast(x)
        count = torch.full((1,), xf.numel() // xf.shape[1], dtype=xf.dtype, device=x.device)
        total = all_reduce_sum(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.float()
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d in ``module`` by a ``GlobalBatchNorm`` sharing its tensors (in place)."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)) and not isinstance(child, GlobalBatchNorm):
            bn = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                                 device=None)
            bn.weight, bn.bias = child.weight, child.bias
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(bn, buf, getattr(child, buf))
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            convert_batchnorm(child)
    return module


_OPEN: list[ProcessGroup] = []


def from_env(device: torch.device, dist_cfg=None) -> Dist:
    """``ProcessGroup`` when launched with more than one process (torchrun), else ``SINGLE``.

    ``device`` is the configured one; under NCCL each process takes ``cuda:LOCAL_RANK``. The process group is
    created once per process (``shutdown`` ends it)."""
    env = torchrun_env()
    barlow_gpus = getattr(dist_cfg, "barlow_gpus", None)
    if env is None or env[1] <= 1:
        if barlow_gpus is None:
            return SINGLE
        one = Dist()  # one process emulating the official per-GPU Barlow Twins C
        one.barlow_gpus = barlow_gpus
        return one
    rank, world, local = env
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    local_loss = getattr(dist_cfg, "local_loss", False)
    if _OPEN and tdist.is_initialized():
        _OPEN[-1].local_loss, _OPEN[-1].device = local_loss, device
    else:
        _OPEN.append(ProcessGroup(rank, world, local, device, getattr(dist_cfg, "timeout_s", 3600), local_loss=local_loss))
    _OPEN[-1].barlow_gpus = barlow_gpus
    return _OPEN[-1]


def shutdown() -> None:
    """End the process group ``from_env`` created (at the end of ``fastpnr train``)."""
    while _OPEN:
        _OPEN.pop().close()
