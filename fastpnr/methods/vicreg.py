"""VICReg (anchors §1.2): 3-layer projector; invariance + variance + covariance terms (25/25/1)."""
from __future__ import annotations

from ..losses import vicreg_loss
from ..models import mlp
from fastpnr.system.precision import upcast
from .base import Method


class VICReg(Method):
    def build_heads(self):
        self.projector = mlp(self.feat_dim, self.cfg.proj_hidden, self.cfg.proj_out, layers=3)

    def ssl_loss(self, out):
        z1, z2 = self.dist.loss_batch(*(upcast(z) for z in out["z"]))  # global variance and covariance
        c = self.cfg
        loss = vicreg_loss(z1, z2, sim_weight=c.sim_weight, var_weight=c.var_weight, cov_weight=c.cov_weight)
        return loss, {"vicreg": loss.detach()}
