"""The method contract: a backbone, heads and a loss. The trainer knows nothing else about a method.

A method is an ``nn.Module`` that
- embeds every view (``forward_views``) and returns a dict of lists, one entry per view: ``feats``
  (backbone features), ``z`` (projector outputs) and whatever its loss needs (``p``, ``k``, ...);
- computes its SSL loss from that dict (``ssl_loss``), a pure function of tensors;
- updates its EMA networks and queues after the optimizer step (``after_step``), with tensor ops only.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from fastpnr.system.distributed import SINGLE
from ..models import backbone_from_config
from ..method_configs import MethodConfig


class Method(nn.Module):
    """Backbone + heads + online linear probe. Subclasses define ``build_heads`` and ``ssl_loss``."""

    num_views = 2
    dist = SINGLE  # the run's distributed.Dist (set by ContinualRun): gathers batch-coupled loss inputs

    def __init__(self, cfg: MethodConfig, model_cfg, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.model_cfg, self.num_classes = model_cfg, num_classes  # a second network of the same kind (POCON's expert)
        self.backbone = backbone_from_config(model_cfg)
        self.feat_dim = self.backbone.feat_dim
        self.build_heads()
        self.classifier = nn.Linear(self.feat_dim, num_classes)  # online probe on detached features
        # The anchors' --momentum_classifier (MoCo, BYOL scripts): a second probe on the EMA backbone's features.
        self.momentum_classifier = (nn.Linear(self.feat_dim, num_classes)
                                    if getattr(cfg, "momentum_classifier", False) else None)

    # -- to override ---------------------------------------------------------------------------
    @classmethod
    def check_run_config(cls, run_cfg) -> None:
        """Raise ConfigError for a setting that clashes with another section (``config.validate_combinations``)."""

    def build_heads(self) -> None:
        raise NotImplementedError

    def ssl_loss(self, out: dict):
        """-> (scalar loss, dict of detached scalar tensors to log)."""
        raise NotImplementedError

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return []

    @property
    def proj_dim(self) -> int:
        return self.cfg.proj_out

    # -- shared ---------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor):
        feats = self.backbone(x)
        return feats, self.projector(feats)

    def forward_views(self, views: list[torch.Tensor]) -> dict:
        # One forward per view, as the anchors: BN statistics are per view.
        feats, z = zip(*(self.embed(v) for v in views))
        return {"feats": list(feats), "z": list(z)}

    def distill_input(self, out: dict) -> list[torch.Tensor]:
        """What the distill predictor of PNR / CaSSLe takes, per view: the projector output z (MoCo: normalized q)."""
        return out["z"]

    def online_logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats.detach())

    def momentum_online_logits(self, out: dict, probe_x: torch.Tensor | None) -> torch.Tensor:
        """The momentum classifier on the EMA backbone's features: of the probe batch ``probe_x`` (forwarded in train
        mode under no_grad, as the anchors' ``_online_eval_shared_step_momentum``), or, for the "task" probe (None),
        of the training batch's first view."""
        if probe_x is None:
            feats = out["momentum_feats"][0]
        else:
            with torch.no_grad():
                feats = self.momentum_backbone(probe_x)
        return self.momentum_classifier(feats.detach())

    def param_groups(self, optim_cfg) -> list[dict]:
        """Parameter groups: everything at the base lr/wd; the online probe at classifier_lr, no weight decay.

        classifier_lr is not scaled by batch/256: the anchors scale only ``lr`` (cassle/args/utils.py)."""
        head = [p for n, p in self.named_parameters() if not n.startswith(("classifier.", "momentum_"))]
        groups = [{"name": "ssl", "params": head}]
        groups.append({"name": "classifier", "params": list(self.classifier.parameters()),
                       "lr": optim_cfg.classifier_lr, "weight_decay": 0.0})
        if self.momentum_classifier is not None:  # the anchors: the same settings as the classifier
            groups.append({"name": "momentum_classifier", "params": list(self.momentum_classifier.parameters()),
                           "lr": optim_cfg.classifier_lr, "weight_decay": 0.0})
        return groups

    def ema_tau(self, step: int, total_steps: int) -> float:
        """The anchors' cosine tau schedule tau(k) = final - (final - base)(cos(pi k / K) + 1) / 2 (restarts every
        task; K = the task's optimizer steps, all epochs), on the host."""
        return self.cfg.final_tau - (self.cfg.final_tau - self.cfg.base_tau) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2

    def step_tau(self, step: int, total_steps: int) -> float:
        """The tau of the EMA update after optimizer step ``step`` (0-based in the task, across epochs): tau(step - 1),
        and 1 (no update) after step 0, as the anchors. Their update runs in Lightning's ``on_train_batch_end``, where
        ``global_step`` still holds this step's index, only when ``global_step > last_step`` (false at step 0), with
        the tau ``update_tau`` computed one call earlier (csm9493/PNR cassle/methods/base.py, utils/momentum.py)."""
        return 1.0 if step == 0 else self.ema_tau(step - 1, total_steps)

    def after_step(self, step: int, total_steps: int, tau: torch.Tensor | None = None) -> None:
        """EMA update after optimizer step ``step``: foreach ops, no host sync. ``tau``: a 0-d float32 device tensor
        holding ``step_tau(step, total_steps)``, filled outside a captured CUDA graph (the graph reads each step's
        value); None: filled here."""
        pairs = self.momentum_pairs()
        if not pairs:
            return
        ema_params, online_params = [], []
        for online, ema in pairs:
            for po, pe in zip(online.parameters(), ema.parameters()):
                online_params.append(po.detach())
                ema_params.append(pe)
        with torch.no_grad():
            if tau is None:  # a fill kernel, not a host-to-device copy (which would sync)
                tau = torch.full((), self.step_tau(step, total_steps), dtype=torch.float32, device=ema_params[0].device)
            # xi <- xi + (1 - tau) (theta - xi), lerp's formula (_foreach_lerp_ would .item() a tensor weight);
            # tau = 1 leaves xi's bits unchanged (xi + 0). BN buffers are not averaged (anchors).
            delta = torch._foreach_sub(online_params, ema_params)
            torch._foreach_add_(ema_params, torch._foreach_mul(delta, 1.0 - tau))

    def end_of_step(self, out: dict) -> None:
        """Called after the optimizer step with this step's outputs (queues)."""

    def make_momentum_copy(self, module: nn.Module) -> nn.Module:
        ema = copy.deepcopy(module)
        for p in ema.parameters():
            p.requires_grad_(False)
        return ema

    def frozen_copy(self) -> nn.Module:
        """The online encoder + projector as one frozen module (x -> z)."""
        return FrozenEncoder(copy.deepcopy(self.backbone), copy.deepcopy(self.projector))


class FrozenEncoder(nn.Module):
    """The previous task's online encoder + projector; parameters never require grad."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))
