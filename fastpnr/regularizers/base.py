"""The regularizer contract: how a continual strategy plugs into the training step.

At the start of task t the loop calls ``begin_task(method, t)``; a regularizer that needs the previous
model snapshots it there (task >= 1). Each step the trainer runs ``frozen_forward(views)`` (no grad, on a
side CUDA stream when asked) and adds ``penalty(method, out, frozen_out)`` to the loss; when
``replaces_ssl_loss`` is true (contrastive PNR) the method's own loss is skipped once the regularizer is
active. The trainer knows nothing else about a regularizer.
"""
from __future__ import annotations

import torch
from torch import nn

from fastpnr.system.distributed import SINGLE
from .reservoir import ReservoirBuffer

from ..regularizer_configs import RegularizerConfig


class Regularizer(nn.Module):
    """Fine-tuning: no frozen model, no penalty (the base class is the identity strategy)."""

    replaces_ssl_loss = False
    needs_frozen = False
    dist = SINGLE  # the run's distributed.Dist (set by ContinualRun)

    def __init__(self, cfg: RegularizerConfig, method):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        self.frozen = None
        # Replay (regularizer.replay, any strategy): the reservoir of dataset indices, checkpointed with the rest.
        self.replay_buffer = ReservoirBuffer(cfg.buffer_size) if cfg.replay != "none" else None

    @property
    def active(self) -> bool:
        """True from task 1 on for regularizers that use the previous model (task 0 is plain SSL)."""
        return self.frozen is not None

    def begin_task(self, method, task: int) -> None:
        self.task.fill_(task)

    # -- phases inside a task (POCON); one phase "train" of optim.epochs by default ---------------------
    @classmethod
    def phases(cls, cfg, task: int, epochs: int) -> list[tuple[str, int]]:
        """(name, epochs) of task ``task``'s training phases, in order (``epochs``: optim.epochs), from the config
        alone (the progress bar counts them before the model is built). Each phase has its own optimizer and
        learning-rate schedule; a checkpoint's epoch counts the task's epochs across phases."""
        return [("train", epochs)]

    def begin_phase(self, method, task: int, phase: str) -> None:
        """Called when phase ``phase`` of task ``task`` starts (not when a run resumes inside it), after begin_task."""

    def phase_modules(self, method, phase: str):
        """(the Method the phase's steps train, the Regularizer they use): ``(method, self)`` by default."""
        return method, self

    def frozen_forward(self, views: list[torch.Tensor]) -> dict:
        return {}

    def penalty(self, method, out: dict, frozen_out: dict):
        """-> (scalar loss, dict of detached scalar tensors to log)."""
        raise NotImplementedError

    def param_groups(self, optim_cfg) -> list[dict]:
        return []

    def end_of_step(self, out: dict, frozen_out: dict) -> None:
        """Called after the optimizer step (e.g. MoCo-PNR's frozen queue)."""

    @classmethod
    def check_run_config(cls, run_cfg) -> None:
        """Raise ConfigError for a setting that clashes with another section (``config.validate_combinations``)."""


class FrozenModelRegularizer(Regularizer):
    """Base for regularizers that hold the previous task's frozen online encoder + projector."""

    needs_frozen = True

    def __init__(self, cfg, method):
        super().__init__(cfg, method)
        # Built at construction (weights replaced in begin_task) so a checkpoint of any task loads into it.
        self.frozen = method.frozen_copy()
        self.register_buffer("has_frozen", torch.zeros((), dtype=torch.bool))

    # ``has_frozen`` (a buffer) goes into checkpoints; its host mirror lets the step ask ``active`` without a sync.
    @property
    def active(self) -> bool:
        return bool(self._has_frozen_host)

    def _set_has_frozen(self, value: bool):
        self.has_frozen.fill_(value)
        self._has_frozen_host = value

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._has_frozen_host = bool(self.has_frozen)
        return result

    _has_frozen_host = False

    def begin_task(self, method, task: int) -> None:
        super().begin_task(method, task)
        if task >= 1:
            self.take_frozen(method)
        self.frozen.train(self.cfg.frozen_bn == "train")
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def take_frozen(self, method) -> None:
        """The frozen model := the *online* encoder + projector now (not the EMA networks), as the anchors."""
        self.frozen.backbone.load_state_dict(method.backbone.state_dict())
        self.frozen.projector.load_state_dict(method.projector.state_dict())
        self._set_has_frozen(True)

    def stream_step(self, method, step: int) -> None:
        """On a stream, after ``step`` steps: the frozen model refreshed every ``regularizer.refresh_every`` steps
        (a task-free stream has no task end to take it at)."""
        every = self.cfg.refresh_every
        if every is not None and step % every == 0:
            self.take_frozen(method)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen is not None:
            # The frozen model's BN mode is a setting, not the trainer's mode (anchors §2.0).
            self.frozen.train(mode and self.cfg.frozen_bn == "train")
        return self

    @torch.no_grad()
    def frozen_forward(self, views):
        # Every regularizer is two-view; 4-view methods (GSG) are regularized on their first image's two views.
        return {"z": [self.frozen(v) for v in views[:2]]}


class DistillRegularizer(FrozenModelRegularizer):
    """Frozen model + the distill predictor q = Linear(D, H) - BN - ReLU - Linear(H, D) of PNR and CaSSLe.

    q is applied to the current projector output (``method.distill_input``; MoCo: the normalized q), never to
    BYOL's predictor output (anchors §2.0). It has its own parameter group.
    """

    def __init__(self, cfg, method):
        super().__init__(cfg, method)
        from ..models import mlp

        dim = method.proj_dim
        self.distill_predictor = mlp(dim, cfg.distill_hidden, dim)
        self.kind = method_kind(method)
        self.distill_weight = 1.0  # lambda_d; subclasses set it

    def distill_lr_scale(self) -> float:
        return distill_lr_scale(self.kind, self.distill_weight)

    def param_groups(self, optim_cfg):
        return distill_param_groups(self.distill_predictor, optim_cfg, self.distill_lr_scale())

    def predict(self, method, out) -> list[torch.Tensor]:
        return [self.distill_predictor(z) for z in method.distill_input(out)[:2]]


def distill_lr_scale(kind: str, weight: float) -> float:
    """BYOL-style distillers (predictive, BYOL-PNR): lr if distill_lamb >= 1 else lr / distill_lamb (anchors §1.1)."""
    if kind in ("byol", "simsiam") and weight < 1:
        return 1.0 / max(weight, 1e-12)
    return 1.0


def distill_param_groups(predictor, optim_cfg, lr_scale: float) -> list[dict]:
    """The distill predictor's own parameter group: the base lr times ``lr_scale``, the base weight decay."""
    return [{"name": "distill_predictor", "params": list(predictor.parameters()),
             "lr": optim_cfg.effective_lr(optim_cfg.lr) * lr_scale, "weight_decay": optim_cfg.weight_decay}]


def method_kind(method) -> str:
    """Which family of loss a method's regularizer uses: contrastive (SimCLR, MoCo) or the asymmetric form."""
    return getattr(method, "regularizer_kind", method.cfg.name)
