"""SimCLR (anchors §1.2): NT-Xent over both views, Linear-ReLU-Linear projector."""
from __future__ import annotations

from ..losses import simclr_loss
from ..losses.pnr_diagnostic import positive_logit
from ..models import mlp
from fastpnr.system.precision import upcast
from .base import Method


class SimCLR(Method):
    def build_heads(self):
        self.projector = mlp(self.feat_dim, self.cfg.proj_hidden, self.cfg.proj_out, bn=False)

    def ssl_loss(self, out):
        z1, z2 = self.dist.loss_batch(*(upcast(z) for z in out["z"]))  # negatives from the global batch
        loss = simclr_loss(z1, z2, temperature=self.cfg.temperature, backend=self.cfg.loss_backend)
        return loss, {"simclr": loss.detach(), **positive_logit(z1, z2)}  # the positive: as SimCLR-PNR logs it
