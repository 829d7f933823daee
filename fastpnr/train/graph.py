"""The whole training step in one CUDA graph: static input buffers, warm-up, capture, replay, eager fallback.

At batch 256 the eager step is launch-bound (issue 6: 7,230 img/s eager vs 18,084 img/s captured, H100, compute
only). ``GraphStep`` wraps ``Trainer.step_body``:

- each step's batch (views, labels, probe batch) is copied (``copy_``, non_blocking) into static buffers that
  the captured graph reads; learning rates (``LARS.use_tensor_lr``) and the EMA tau are 0-d device tensors
  written outside the graph (``fill_``), so the graph needs no per-step Python value;
- the first call warms the step up for a few iterations on a side stream (cuDNN algorithm choice, Triton
  autotuning, lazy optimizer state), puts every parameter, buffer and optimizer state back as it was (the
  warm-up is a rehearsal, not training), then captures forward, frozen forward (on its own stream: fork and
  join are graph edges), losses, backward, optimizer step, EMA and queue updates and the online probe;
- every later call refills the buffers and replays. ``recapture()`` drops the graph (new frozen model, new
  optimizer or parameter groups: a new task), and a change of batch shapes re-captures by itself;
- where the step cannot be captured (not CUDA; fp16, whose GradScaler syncs; a capture error) it prints one
  line saying why and runs ``step_body`` eagerly, still through the static buffers (so CPU tests exercise them).
"""
from __future__ import annotations

import torch

FP16_REASON = "train.precision='fp16': the GradScaler's inf check and scale update sync with the host"


def capture_blocker(device: torch.device, precision: str) -> str | None:
    """Why the step cannot be captured on ``device`` at ``precision`` (None: it can)."""
    if precision == "fp16":
        return FP16_REASON
    if torch.device(device).type != "cuda":
        return f"CUDA graphs need a CUDA device (device={torch.device(device).type})"
    return None


def _layout(views, labels, probe_batch):
    """What fixes the static buffers: shapes, dtypes, strides (channels_last) and the probe kind."""
    spec = lambda t: (tuple(t.shape), t.dtype, tuple(t.stride()), t.device)  # noqa: E731
    if probe_batch is None:
        probe = None
    elif probe_batch[0] is None:
        probe = ("task", spec(probe_batch[1]))
    else:
        probe = ("full", spec(probe_batch[0]), spec(probe_batch[1]))
    return tuple(spec(v) for v in views), spec(labels), probe


_SAID: set = set()


class GraphStep:
    """Callable like ``Trainer.step``: ``(views, labels, probe_batch, step, total_steps) -> logs``.

    The returned logs are the graph's static outputs: they hold this step's values until the next call.
    """

    def __init__(self, trainer, warmup_steps: int = 3, log=print):
        self.trainer = trainer
        self.warmup_steps = warmup_steps
        self.log = log
        self.device = trainer.device
        self.has_ema = bool(trainer.method.momentum_pairs())
        self.tau = torch.ones((), dtype=torch.float32, device=self.device)
        self.reason = capture_blocker(self.device, trainer.cfg.precision)
        if self.reason is not None and (log, self.reason) not in _SAID:
            # Once per logger and reason: a CPU run would otherwise repeat it at every task.
            _SAID.add((log, self.reason))
            log(f"cuda_graph: running the step eagerly ({self.reason})")
        self.graph = None
        self.static = None        # (views, labels, probe_batch) buffers
        self.static_logs = None   # the captured step's outputs
        self._layout = None
        self._lr_ready = False

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def recapture(self) -> None:
        """Forget the graph and the buffers; the next call captures again (call at a task boundary)."""
        self.graph = self.static = self.static_logs = self._layout = None
        self._lr_ready = False
        if self.reason is not None and self.reason.startswith("capture failed"):
            self.reason = capture_blocker(self.device, self.trainer.cfg.precision)

    # ------------------------------------------------------------------------------------ buffers
    def _allocate(self, views, labels, probe_batch) -> None:
        static_views = [torch.empty_like(v) for v in views]  # empty_like keeps channels_last
        static_labels = torch.empty_like(labels)
        if probe_batch is None:
            probe = None
        elif probe_batch[0] is None:  # "task" probe: the training batch's own labels
            probe = (None, static_labels)
        else:
            probe = (torch.empty_like(probe_batch[0]), torch.empty_like(probe_batch[1]))
        self.static = (static_views, static_labels, probe)

    def refill(self, views, labels, probe_batch) -> None:
        """Copy this step's batch into the static buffers (allocated, and the graph dropped, on a new layout)."""
        layout = _layout(views, labels, probe_batch)
        if layout != self._layout:
            self.graph = self.static_logs = None
            self._allocate(views, labels, probe_batch)
            self._layout = layout
        static_views, static_labels, static_probe = self.static
        pairs = list(zip(static_views, views)) + [(static_labels, labels)]
        if static_probe is not None and static_probe[0] is not None:
            pairs += [(static_probe[0], probe_batch[0]), (static_probe[1], probe_batch[1])]
        for dst, src in pairs:
            if dst is not src:
                dst.copy_(src, non_blocking=True)

    # ------------------------------------------------------------------------------------ the step
    def __call__(self, views, labels, probe_batch, step: int, total_steps: int):
        t = self.trainer
        if not self._lr_ready:
            t.optimizer.use_tensor_lr(self.device)  # set_lr now fill_s these tensors
            self._lr_ready = True
        self.refill(views, labels, probe_batch)
        if self.has_ema:
            self.tau.fill_(t.method.step_tau(step, total_steps))  # outside the graph, no sync; eager uses the same
        if self.reason is None and self.graph is None:
            self._capture()
        if self.graph is None:
            return self._eager()
        self.graph.replay()
        return self.static_logs

    def _eager(self, cache_enabled: bool = True):
        views, labels, probe = self.static
        return self.trainer.step_body(views, labels, probe, tau=self.tau, cache_enabled=cache_enabled)

    # ------------------------------------------------------------------------------------ capture
    def _state_tensors(self) -> list[torch.Tensor]:
        """Every tensor a step mutates: parameters and buffers of method and regularizer, optimizer state."""
        t = self.trainer
        seen, out = set(), []
        tensors = list(t.method.state_dict(keep_vars=True).values()) + list(t.regularizer.state_dict(keep_vars=True).values())
        for state in t.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        for x in tensors:
            if isinstance(x, torch.Tensor) and id(x) not in seen:
                seen.add(id(x))
                out.append(x)
        return out

    def snapshot(self):
        """A copy of the training state, and which parameters had no optimizer state yet."""
        with torch.no_grad():
            saved = [(x, x.detach().clone()) for x in self._state_tensors()]
        fresh = [p for g in self.trainer.optimizer.param_groups for p in g["params"] if not self.trainer.optimizer.state.get(p)]
        return saved, fresh

    def restore(self, snap) -> None:
        """Write the snapshot back in place (the graph keeps the addresses); state created since is zeroed, as a
        fresh momentum buffer is (0 * m + g == g)."""
        saved, fresh = snap
        with torch.no_grad():
            for x, copy in saved:
                x.detach().copy_(copy)
            for p in fresh:
                for v in self.trainer.optimizer.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor):
                        v.zero_()

    def warmup(self) -> None:
        """Run the step ``warmup_steps`` times and put the state back: caches filled, nothing trained.
        On CUDA it runs on a side stream, as capture requires of the first iterations."""
        snap = self.snapshot()
        try:
            if self.device.type == "cuda":
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(self.warmup_steps):
                        self._eager(cache_enabled=False)
                torch.cuda.current_stream(self.device).wait_stream(side)
            else:
                for _ in range(self.warmup_steps):
                    self._eager(cache_enabled=False)
        finally:
            self.restore(snap)

    def _capture(self) -> None:
        try:
            self.warmup()
            graph = torch.cuda.CUDAGraph()
            # Capture runs nothing (the state stays as restored). thread_local: a loader's pin-memory thread may
            # keep calling CUDA while this thread captures.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                logs = self._eager(cache_enabled=False)
            self.graph, self.static_logs = graph, logs
        except Exception as e:  # noqa: BLE001 - any capture error means: run eagerly, and say why
            self.graph = self.static_logs = None
            first = (str(e).strip().splitlines() or [""])[0][:160]
            self.reason = f"capture failed: {type(e).__name__}: {first}"
            self.log(f"cuda_graph: running the step eagerly ({self.reason})")
