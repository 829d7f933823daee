"""Barlow Twins (anchors §1.2): 3-layer projector, cross-correlation loss."""
from __future__ import annotations

from ..losses import barlow_loss
from ..models import mlp
from fastpnr.system.precision import upcast
from .base import Method


class BarlowTwins(Method):
    def build_heads(self):
        self.projector = mlp(self.feat_dim, self.cfg.proj_hidden, self.cfg.proj_out, layers=3)

    def ssl_loss(self, out):
        z1, z2 = self.dist.barlow_batch(*(upcast(z) for z in out["z"]))  # the global batch's cross-correlation
        loss = barlow_loss(z1, z2, lamb=self.cfg.lamb, scale=self.cfg.scale, correlation=self.dist.barlow_correlation())
        return loss, {"barlow": loss.detach()}
