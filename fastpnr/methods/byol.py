"""BYOL (anchors §1.2): EMA target, predictor; loss = sum over the two views of 2 - 2 cos(p_i, sg z_j^xi)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..losses import byol_loss
from ..models import mlp
from ..precision import upcast
from .base import Method, MethodConfig, check_tau


@dataclass(frozen=True)
class BYOLConfig(MethodConfig):
    proj_hidden: int = 4096
    proj_out: int = 256
    pred_hidden: int = 4096               # predictor hidden width
    base_tau: float = 0.99                # EMA momentum of the target network at the start (cosine schedule)
    final_tau: float = 1.0                # EMA momentum at the end of the schedule
    momentum_classifier: bool = True  # also probe the EMA backbone (anchors' --momentum_classifier), with the online probe

    def __post_init__(self):
        super().__post_init__()
        check_tau(self)


class BYOL(Method):
    def build_heads(self):
        self.projector = mlp(self.feat_dim, self.cfg.proj_hidden, self.cfg.proj_out)
        self.predictor = mlp(self.cfg.proj_out, self.cfg.pred_hidden, self.cfg.proj_out)
        self.momentum_backbone = self.make_momentum_copy(self.backbone)
        self.momentum_projector = self.make_momentum_copy(self.projector)

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def forward_views(self, views):
        out = super().forward_views(views)
        out["p"] = [self.predictor(z) for z in out["z"]]
        with torch.no_grad():
            out["momentum_feats"] = [self.momentum_backbone(v) for v in views]
            out["k"] = [self.momentum_projector(f) for f in out["momentum_feats"]]
        return out

    def ssl_loss(self, out):
        (p1, p2), (k1, k2) = [upcast(x) for x in out["p"]], [upcast(x) for x in out["k"]]
        # The anchors sum the two directions (not average).
        loss = byol_loss(p1, k2.detach()) + byol_loss(p2, k1.detach())
        return loss, {"byol": loss.detach()}
