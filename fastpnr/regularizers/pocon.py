"""POCON, Plasticity-Optimized Complementary Networks (Gomez-Villa et al., WACV 2024), on alviur/pocon_wacv2024.

Every task has two phases (``src/approach/copyOPscratch.py::train``):

1. ``expert`` (L508-539): a separate expert network (a second model of the run's method: backbone + projector) is
   trained with the method's SSL loss on the current task; the main network is not trained. At task t >= 1 the
   expert starts from the main backbone (L589, the end of the previous task) and the previous main backbone is
   kept frozen (``oldBackbone``, L483).
2. ``main`` (L542-578): the main backbone is trained (no SSL loss of its own) with
   ``lambda_exp [||n(h_exp(f_1)) - n(e_1)|| + ||n(h_exp(f_2)) - n(e_2)||]
   + lambda_ret [||n(h_ret(f_1)) - n(o_1)|| + ||n(h_ret(f_2)) - n(o_2)||]`` (the second sum from task 1 on;
   ``sslModels.py`` L146-190): f the main backbone's features, e the frozen trained expert's (``copyExpert``, BN in
   eval mode, L546), o the frozen previous backbone's (BN eval, L557), n the row-wise L2 normalization and ||.|| the
   Frobenius norm over the batch (``torch.dist``). h_exp is re-initialized at every task's phase 2 (L548); h_ret
   persists.

Each phase has its own optimizer and learning-rate schedule (``configure_optimizers`` mode 0 and 1) and its own
epochs (``regularizer.expert_epochs``, ``main_epochs``, ``main_epochs_task0``); a checkpoint inside a phase resumes
there. The expert, its frozen copy, the previous backbone and both heads are in this module's state_dict.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import require
from fastpnr.system.precision import upcast
from ..losses import pocon_distill
from .base import Regularizer
from ..regularizer_configs import POCONConfig, RegularizerConfig

PHASES = ("expert", "main")


def pocon_phase_epochs(cfg: POCONConfig, task: int, epochs: int) -> list[tuple[str, int]]:
    """[("expert", E_exp), ("main", E_main)] of task ``task`` for ``optim.epochs = epochs`` (the defaults' ratios
    are the authors': 500 expert epochs, 500 main epochs at task 0 and 250 later)."""
    expert = cfg.expert_epochs if cfg.expert_epochs is not None else epochs
    if task == 0:
        main = cfg.main_epochs_task0 if cfg.main_epochs_task0 is not None else epochs
    else:
        main = cfg.main_epochs if cfg.main_epochs is not None else max(1, epochs // 2)
    return [("expert", expert), ("main", main)]


def expert_head(d: int) -> nn.Sequential:
    """h_exp: ``prediction_mlp(d, ., linear=3)`` of the authors' configuration (``--linearProj 3``, wacv.py L76;
    utilsProj.py L27-38): Linear(d, 2d, no bias)-BN-ReLU-Linear(2d, d)-BN-ReLU-Linear(d, 2d)-BN-ReLU-Linear(2d, d)."""
    return nn.Sequential(nn.Linear(d, 2 * d, bias=False), nn.BatchNorm1d(2 * d), nn.ReLU(),
                         nn.Linear(2 * d, d), nn.BatchNorm1d(d), nn.ReLU(),
                         nn.Linear(d, 2 * d), nn.BatchNorm1d(2 * d), nn.ReLU(),
                         nn.Linear(2 * d, d))


def retro_head(d: int) -> nn.Sequential:
    """h_ret: ``prediction_mlp(d, ., linear=0)`` (``--linearProjRet`` default 0, copyOPscratch.py L338; utilsProj.py
    L7-9): one Linear(d, d) with bias."""
    return nn.Sequential(nn.Linear(d, d))


def _reset(module: nn.Module) -> None:
    """Fresh default initialization in place (the authors build a new ``projectorExp`` every task, L548)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


class POCON(Regularizer):
    replaces_ssl_loss = True  # phase 2 trains the main network with the distances only

    def __init__(self, cfg: POCONConfig, method):
        super().__init__(cfg, method)
        # The expert: a second model of the run's method (its own initialization, drawn from the seeded RNG).
        self.expert = type(method)(method.cfg, method.model_cfg, method.num_classes)
        self.expert_frozen = _frozen(copy.deepcopy(self.expert.backbone))  # copyExpert (L539)
        self.old_backbone = _frozen(copy.deepcopy(method.backbone))        # oldBackbone (L483)
        d = method.feat_dim
        self.expert_head, self.retro_head = expert_head(d), retro_head(d)
        self.register_buffer("has_old", torch.zeros((), dtype=torch.bool))
        self._has_old_host = False
        self._stub = [None]  # the expert phase's regularizer: fine-tuning (a list: not a submodule, no state)

    @property
    def active(self) -> bool:
        return True  # only the main phase's steps use this regularizer (the expert phase gets a fine-tuning one)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._has_old_host = bool(self.has_old)

    @classmethod
    def phases(cls, cfg, task: int, epochs: int):
        return pocon_phase_epochs(cfg, task, epochs)

    @torch.no_grad()
    def begin_phase(self, method, task: int, phase: str) -> None:
        require(phase in PHASES, "phase", phase, PHASES)
        if phase == "expert":
            if task >= 1:
                # end of task t-1 (L589): the expert restarts from the main backbone; the start of task t (L483):
                # that backbone becomes the frozen previous one
                self.expert.backbone.load_state_dict(method.backbone.state_dict())
                self.old_backbone.load_state_dict(method.backbone.state_dict())
                self.has_old.fill_(True)
                self._has_old_host = True
        else:
            self.expert_frozen.load_state_dict(self.expert.backbone.state_dict())
            _reset(self.expert_head)

    def phase_modules(self, method, phase: str):
        if phase == "expert":
            if self._stub[0] is None:
                stub = Regularizer(RegularizerConfig(), self.expert).to(self.task.device)
                stub.dist = self.dist
                self._stub[0] = stub
            self.expert.dist = self.dist
            return self.expert, self._stub[0]
        return method, self

    def param_groups(self, optim_cfg):
        # both heads at the base lr with the main backbone (configure_optimizers mode 1, sslModels.py L257-262)
        lr = optim_cfg.effective_lr(optim_cfg.lr)
        return [{"name": "pocon_heads", "params": [*self.expert_head.parameters(), *self.retro_head.parameters()],
                 "lr": lr, "weight_decay": optim_cfg.weight_decay}]

    def train(self, mode: bool = True):
        super().train(mode)
        self.expert_frozen.eval()  # set_bn_eval (L546, L557), whatever the trainer's mode
        self.old_backbone.eval()
        return self

    @torch.no_grad()
    def frozen_forward(self, views):
        out = {"expert": [self.expert_frozen(v) for v in views[:2]]}
        if self._has_old_host:
            out["old"] = [self.old_backbone(v) for v in views[:2]]
        return out

    def penalty(self, method, out, frozen_out):
        f1, f2 = (upcast(f) for f in out["feats"][:2])
        e1, e2 = (upcast(e) for e in frozen_out["expert"])
        h1, h2 = upcast(self.expert_head(f1)), upcast(self.expert_head(f2))
        h1, h2, e1, e2 = self.dist.loss_batch(h1, h2, e1, e2)  # a norm over the whole (global) batch
        adapt = self.cfg.expert_weight * pocon_distill(h1, h2, e1, e2)
        logs = {"pocon_adapt": adapt.detach()}
        loss = adapt
        if "old" in frozen_out:
            o1, o2 = (upcast(o) for o in frozen_out["old"])
            r1, r2 = upcast(self.retro_head(f1)), upcast(self.retro_head(f2))
            r1, r2, o1, o2 = self.dist.loss_batch(r1, r2, o1, o2)
            retro = self.cfg.retro_weight * pocon_distill(r1, r2, o1, o2)
            logs["pocon_retro"] = retro.detach()
            loss = loss + retro
        return loss, logs


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module
