"""PFR, projected functional regularization (Gomez-Villa et al., CVPR-W 2022), on the code alviur/CVPR_PFR.

L = L_SSL + lambda * (-1/2) [cos(h(f_1), sg f'_1) + cos(h(f_2), sg f'_2)], with f_v the current **backbone**
features of view v (not the projector output), f'_v the frozen previous backbone's, and the temporal projector
h = Linear(d, d/2) - BN - ReLU - Linear(d/2, d) (``cassle/distillers/pfr.py`` L26-31, L62-79). h has its own
parameter group at the base learning rate and weight decay (``learnable_params``, L57-60: no lr of its own).

The frozen model is the previous task's online encoder, as CaSSLe's (``cassle/distillers/base.py``, which PFR's
wrapper builds on); that wrapper never calls ``.eval()``, so the frozen BN runs in train mode by default here
(``regularizer.frozen_bn train``). GSG methods are regularized on their first image's two views.
"""
from __future__ import annotations

import torch

from fastpnr.system.precision import upcast
from ..losses import pfr_distill
from .base import FrozenModelRegularizer
from ..regularizer_configs import PFRConfig


class PFR(FrozenModelRegularizer):
    def __init__(self, cfg: PFRConfig, method):
        super().__init__(cfg, method)
        from ..models import mlp

        d = method.feat_dim
        self.temporal_projector = mlp(d, cfg.projector_hidden or d // 2, d)  # int(d / 2) in the authors' code
        self.weight = cfg.weight

    @torch.no_grad()
    def frozen_forward(self, views):
        # The frozen *backbone* only: PFR regularizes features, the frozen projector is never needed.
        return {"feats": [self.frozen.backbone(v) for v in views[:2]]}

    def param_groups(self, optim_cfg):
        return [{"name": "temporal_projector", "params": list(self.temporal_projector.parameters()),
                 "lr": optim_cfg.effective_lr(optim_cfg.lr), "weight_decay": optim_cfg.weight_decay}]

    def penalty(self, method, out, frozen_out):
        f1, f2 = (upcast(f) for f in frozen_out["feats"])
        p1, p2 = (upcast(self.temporal_projector(f)) for f in out["feats"][:2])
        loss = self.weight * pfr_distill(p1, p2, f1, f2)
        return loss, {"pfr": loss.detach()}
