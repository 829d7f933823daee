"""BYOL (anchors §1.2): EMA target, predictor; loss = sum over the two views of 2 - 2 cos(p_i, sg z_j^xi)."""
from __future__ import annotations

import torch
from torch import nn

from ..losses import byol_loss
from ..models import mlp
from fastpnr.system.precision import upcast
from .base import Method


class BYOL(Method):
    def build_heads(self):
        self.projector = mlp(self.feat_dim, self.cfg.proj_hidden, self.cfg.proj_out)
        # without a predictor p = z: the loss pulls the online projection straight to the EMA target's
        self.predictor = mlp(self.cfg.proj_out, self.cfg.pred_hidden, self.cfg.proj_out) if self.cfg.predictor else nn.Identity()
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
