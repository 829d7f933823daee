"""One task's training: the step (a function of device tensors, no host sync) and the epoch loop.

The step takes views already on the device. The frozen previous model's forward can run on its own CUDA
stream, overlapped with the current model's forward. The loss is read on the host only every
``train.log_every`` steps (the one sync), where a non-finite loss stops the run with a clear error.

The step body (``step_body``) is CUDA-graph capturable when the learning rates and the EMA tau are device
tensors: ``train.cuda_graph`` (``auto`` by default: on CUDA) runs it through ``fastpnr.train.graph.GraphStep``, which
captures it once per task on CUDA and replays it; ``true`` off CUDA runs it eagerly from the same static buffers.
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from fastpnr.eval.collapse import collapse_measures
from fastpnr.system.distributed import SINGLE
from fastpnr.errors import FastPNRError
from .optim import build_optimizer
from fastpnr.system.precision import PARAM_DTYPES, autocast_dtype, upcast


class NonFiniteLossError(FastPNRError):
    """The loss became NaN or infinite."""


def compile_backbone(method, train_cfg) -> bool:
    """``torch.compile`` the online backbone in place when ``train.compile`` is not "off"; True when it did.

    ``nn.Module.compile`` keeps the module and its state_dict keys, so checkpoints, EMA and frozen copies, the
    optimizer's parameter groups and the CUDA-graph capture all see the same module. Compilation happens lazily on
    the first forward (the graph's eager warm-up steps, before capture), once per run: later tasks reuse it.
    The mode never asks inductor for its own CUDA graphs; the whole step is captured by ``graph.GraphStep``.
    """
    mode = getattr(train_cfg, "compile", "off")
    if mode == "off":
        return False
    backend = getattr(train_cfg, "compile_backend", "inductor")
    kwargs = {"backend": backend}
    if backend == "inductor" and mode != "default":
        kwargs["mode"] = mode
    method.backbone.compile(**kwargs)
    return True


class Trainer:
    def __init__(self, method, regularizer, optimizer, train_cfg, device: torch.device, log=print, dist=SINGLE):
        self.dist = dist  # distributed.Dist: gradients averaged over ranks after backward (identity in one process)
        self.method = method
        self.regularizer = regularizer
        self.optimizer = optimizer
        self.cfg = train_cfg
        self.device = device
        self.autocast_dtype = autocast_dtype(train_cfg.precision, device)  # auto: resolved for this device
        self.param_dtype = PARAM_DTYPES[train_cfg.precision]  # the loaders' float32 views are cast to it (fp64)
        if train_cfg.precision == "fp16" and device.type != "cuda":
            raise FastPNRError("train.precision='fp16' needs a CUDA device; allowed on CPU: bf16, fp32, fp64")
        self.scaler = torch.amp.GradScaler(device.type, enabled=train_cfg.precision == "fp16")
        if device.type == "cuda":
            # float32 matmuls left outside autocast (the InfoNCE of normalized fp32 embeddings, the probe) use TF32
            # by default, as cuDNN convolutions already do; "highest" keeps them exact. Process-wide in torch.
            torch.set_float32_matmul_precision(getattr(train_cfg, "matmul_precision", "high"))
        use_stream = train_cfg.frozen_stream and device.type == "cuda"
        self.side_stream = torch.cuda.Stream(device) if use_stream else None
        self.graph = None
        # the first view's projector output of the latest step (graph mode: the captured static output, which every
        # replay overwrites); the collapse measures read it at the log steps, outside the step
        self.last_embedding = None
        mode = getattr(train_cfg, "cuda_graph", "false")
        if mode == "true" or mode == "auto" and device.type == "cuda":  # auto: eager off CUDA, without a word
            from .graph import GraphStep

            self.graph = GraphStep(self, warmup_steps=getattr(train_cfg, "graph_warmup", 3), log=log)

    def autocast(self, cache_enabled: bool = True):
        if self.autocast_dtype is None:
            return nullcontext()
        # cache_enabled=False while capturing a CUDA graph: the autocast weight cache must not outlive the capture.
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, cache_enabled=cache_enabled)

    # ------------------------------------------------------------------------------------ the step
    def _frozen_forward(self, views, cache_enabled: bool = True):
        """Launch the frozen model; returns (outputs, finalize) where finalize joins the side stream.

        Under graph capture the fork (side waits on current) and the join (current waits on side) become
        graph edges, so the replayed graph overlaps the two forwards the same way."""
        if self.side_stream is None:
            with self.autocast(cache_enabled):
                return self.regularizer.frozen_forward(views), lambda out: out
        current = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream), self.autocast(cache_enabled):
            frozen_out = self.regularizer.frozen_forward(views)

        def finalize(out):
            current.wait_stream(self.side_stream)
            for tensors in out.values():
                for t in tensors if isinstance(tensors, (list, tuple)) else [tensors]:
                    if isinstance(t, torch.Tensor):
                        t.record_stream(current)  # produced on the side stream, consumed on the main one
            return out

        return frozen_out, finalize

    def step(self, views, labels, probe_batch, step: int, total_steps: int):
        """One eager optimization step. Returns a dict of detached scalar tensors (nothing is read on the host)."""
        return self.step_body(views, labels, probe_batch, step=step, total_steps=total_steps)

    def run_step(self, views, labels, probe_batch, step: int, total_steps: int):
        """The step the epoch loop runs: through ``GraphStep`` when ``train.cuda_graph``, else eager."""
        if self.graph is not None:
            return self.graph(views, labels, probe_batch, step, total_steps)
        return self.step(views, labels, probe_batch, step, total_steps)

    def step_body(self, views, labels, probe_batch, step: int = 0, total_steps: int = 1, tau=None,
                  cache_enabled: bool = True):
        """Forward (both views, frozen model, probe), losses, backward, optimizer step, EMA and queue updates.

        With ``tau`` (a 0-d device tensor, ``method.step_tau(step, total_steps)``) and tensor learning rates the body
        reads no per-step Python value and syncs nothing, so ``GraphStep`` can capture it."""
        method, reg = self.method, self.regularizer
        reg_active = reg.active
        if reg_active:
            frozen_pending, finalize = self._frozen_forward(views, cache_enabled)
        with self.autocast(cache_enabled):
            out = method.forward_views(views)
            self.last_embedding = out["z"][0].detach()
            logs = {}
            loss = torch.zeros((), device=self.device)
            if not (reg_active and reg.replaces_ssl_loss):
                ssl, ssl_logs = method.ssl_loss(out)
                loss = loss + ssl
                logs.update(ssl_logs)
            frozen_out = finalize(frozen_pending) if reg_active else {}
            if reg_active:
                penalty, reg_logs = reg.penalty(method, out, frozen_out)
                loss = loss + penalty
                logs.update(reg_logs)
            logs["loss"] = loss.detach()  # the SSL + strategy loss; the probes' cross-entropy is logged on its own
            if probe_batch is not None:
                probe_loss, probe_logs = _probe_losses(method, out, probe_batch)
                loss = loss + probe_loss
                logs.update(probe_logs)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.dist.average_gradients([p for g in self.optimizer.param_groups for p in g["params"]])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            method.end_of_step(out)
            reg.end_of_step(out, frozen_out)
            method.after_step(step, total_steps, tau=tau)
        return logs

    # ------------------------------------------------------------------------------------ the epoch
    def train_epoch(self, loader, probe_iter, epoch: int, step_offset: int, total_steps: int, steps: int,
                    progress=None, on_log=None, start_step: int = 0, stop=None, on_skipped=None, after_step=None):
        """Run steps ``start_step..steps-1`` from ``loader`` (an epoch). Returns (the host means of the logged terms,
        the steps done when ``stop`` (``preempt.StopRequest``) was requested at a step boundary, else None).

        Resuming mid-epoch replays the loader's first ``start_step`` batches untrained: an epoch's batches are a
        function of (seed, epoch), so the steps after them see the batches of the uninterrupted run. ``on_skipped``
        runs after them (the checkpoint's RNG state back in place). ``after_step(done)``: after each step, outside
        it (the stream's evaluation points, frozen-model refreshes and checkpoints)."""
        self.method.train()
        self.regularizer.train()
        sums: dict[str, float] = {}
        count = 0
        last_time, last_step = time.perf_counter(), start_step
        batch_size = None
        for i, (views, labels, _indices) in enumerate(loader):
            if i >= steps:
                break
            if i < start_step:
                if probe_iter is not None:
                    next(probe_iter)
                if i + 1 == start_step and on_skipped is not None:
                    on_skipped()
                    last_time = time.perf_counter()
                continue
            batch_size = labels.shape[0]
            probe = None
            if probe_iter is not None:
                probe = next(probe_iter)
            elif self.cfg.online_probe == "task":
                probe = (None, labels)
            if self.param_dtype != torch.float32:  # fp64: the loaders make float32 views
                views = [v.to(self.param_dtype) for v in views]
                probe = probe if probe is None or probe[0] is None else (probe[0].to(self.param_dtype), probe[1])
            logs = self.run_step(views, labels, probe, step_offset + i, total_steps)
            done = i + 1
            if done % self.cfg.log_every == 0 or done == steps:
                # the one host sync, every log_every steps (graph mode: the static outputs of the last replay)
                host = self.dist.mean_logs(logs)  # the global batch's values (a mean over ranks)
                if not all(map(_finite, host.values())):
                    terms = ", ".join(f"{k}={v:.4g}" for k, v in host.items())
                    raise NonFiniteLossError(f"non-finite loss at epoch {epoch} step {done} ({terms}); "
                                             "lower --optim.lr, or use --train.precision fp32")
                if self.last_embedding is not None:  # this process's rows (rank 0's under torchrun)
                    host.update({k: float(v) for k, v in collapse_measures(self.last_embedding).items()})
                now = time.perf_counter()
                ips = (done - last_step) * batch_size * self.dist.world_size / max(now - last_time, 1e-9)
                last_time, last_step = now, done
                for k, v in host.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if on_log is not None:
                    on_log(step_offset + done, host, ips)
                if progress is not None:
                    progress.set_postfix(loss=f"{host['loss']:.3f}", img_s=f"{ips:.0f}")
            if progress is not None:
                progress.update(1)
            if after_step is not None:
                after_step(done)
            # a stop signal is read between steps (a Python int, no sync); across ranks only at the log steps,
            # where the ranks sync anyway, so that all stop after the same step
            synced = not self.dist.enabled or done % self.cfg.log_every == 0
            if stop is not None and done < steps and synced and self.dist.any_rank(stop.requested):
                return {k: v / max(count, 1) for k, v in sums.items()}, done
        return {k: v / max(count, 1) for k, v in sums.items()}, None


def _probe_losses(method, out, probe_batch):
    """Cross-entropy of the online probe and, where the method has one, the momentum probe (added to the loss, as
    the anchors). ``probe_batch``: (images, labels) of the "full" probe, or (None, labels) for the "task" probe
    (the first view of the training batch)."""
    probe_x, probe_y = probe_batch
    if probe_x is None:
        feats = out["feats"][0]
    else:  # "full" probe: the anchors' extra batch from the whole labelled train set
        with torch.no_grad():
            feats = method.backbone(probe_x)
    probe = F.cross_entropy(upcast(method.online_logits(feats)), probe_y)  # fp64 runs: in fp64
    logs = {"probe": probe.detach()}
    if method.momentum_classifier is not None:
        momentum = F.cross_entropy(upcast(method.momentum_online_logits(out, probe_x)), probe_y)
        probe = probe + momentum
        logs["momentum_probe"] = momentum.detach()
    return probe, logs


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def phase_trainer(method, regularizer, task: int, phase: str, cfg, device, dist, log, ckpt: dict | None) -> Trainer:
    """The Trainer of phase ``phase`` of task ``task`` with a fresh optimizer; ``ckpt``: resuming inside the phase (its
    optimizer and scaler state), else the phase starts here (``begin_phase``). The phase's modules come from the
    regularizer (POCON trains its expert first)."""
    if ckpt is None:
        regularizer.begin_phase(method, task, phase)
    method, regularizer = regularizer.phase_modules(method, phase)
    optimizer = build_optimizer(method.param_groups(cfg.optim) + regularizer.param_groups(cfg.optim), cfg.optim)
    trainer = Trainer(method, regularizer, optimizer, cfg.train, device, log=log, dist=dist)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        trainer.scaler.load_state_dict(ckpt["scaler"])
    return trainer
