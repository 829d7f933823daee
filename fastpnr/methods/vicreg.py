"""VICReg (anchors §1.2): 3-layer projector; invariance + variance + covariance terms (25/25/1)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import require
from ..losses import vicreg_loss
from ..models import mlp
from ..precision import upcast
from .base import Method, MethodConfig


@dataclass(frozen=True)
class VICRegConfig(MethodConfig):
    proj_hidden: int = 2048
    proj_out: int = 2048
    sim_weight: float = 25.0              # weight of the invariance (MSE) term
    var_weight: float = 25.0              # weight of the variance term
    cov_weight: float = 1.0               # weight of the covariance term

    def __post_init__(self):
        super().__post_init__()
        for name in ("sim_weight", "var_weight", "cov_weight"):
            require(getattr(self, name) >= 0, f"method.{name}", getattr(self, name), ">= 0")


class VICReg(Method):
    def build_heads(self):
        self.projector = mlp(self.feat_dim, self.cfg.proj_hidden, self.cfg.proj_out, layers=3)

    def ssl_loss(self, out):
        z1, z2 = self.dist.loss_batch(*(upcast(z) for z in out["z"]))  # global variance and covariance
        c = self.cfg
        loss = vicreg_loss(z1, z2, sim_weight=c.sim_weight, var_weight=c.var_weight, cov_weight=c.cov_weight)
        return loss, {"vicreg": loss.detach()}
