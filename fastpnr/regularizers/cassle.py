"""CaSSLe (Fini et al., CVPR 2022) distillers, the baseline PNR is compared with (anchors §3.1).

L = L_SSL + lambda * L_distill, with the distill predictor q applied to the current projection:
- contrastive (SimCLR, MoCo): 1/2 [SD(P, F) + SD(F, P)], no mask, tau_d = 0.2
- predictive (BYOL, SimSiam, GSG): 1/2 sum_i [2 - 2 cos(q(z_i), sg z'_i)]
- decorrelative (Barlow): 1/2 sum_i BT(q(z_i), z'_i; 5e-3, 0.1)
- predictive_mse (VICReg): 1/2 sum_i MSE(q(z_i), z'_i), lambda = 25

The frozen model's BN mode (``regularizer.frozen_bn``) follows the PNR repo, whose CaSSLe baselines run through the
same distill wrapper as PNR (csm9493/PNR cassle/distillers/base.py: ``frozen_encoder.eval()``): a CaSSLe-vs-PNR
comparison never differs in it. ``frozen_bn train`` gives the original CaSSLe repo (DonkeyShot21/cassle), which
never calls ``.eval()``.
"""
from __future__ import annotations

from ..losses import contrastive_distill, decorrelative_distill, predictive_distill, predictive_mse_distill
from fastpnr.system.precision import upcast
from .base import DistillRegularizer
from ..regularizer_configs import CaSSLeConfig

DEFAULT_WEIGHT = {"vicreg": 25.0}


class CaSSLe(DistillRegularizer):
    def __init__(self, cfg: CaSSLeConfig, method):
        super().__init__(cfg, method)
        self.weight = DEFAULT_WEIGHT.get(self.kind, 1.0) if cfg.weight is None else cfg.weight
        self.distill_weight = self.weight

    def penalty(self, method, out, frozen_out):
        f1, f2 = (upcast(f) for f in frozen_out["z"])
        u1, u2 = (upcast(u) for u in self.predict(method, out))
        if self.kind in ("simclr", "mocov2plus"):  # batch-coupled: the global batch
            u1, u2, f1, f2 = self.dist.loss_batch(u1, u2, f1, f2)
        elif self.kind == "barlow":
            u1, u2, f1, f2 = self.dist.barlow_batch(u1, u2, f1, f2)
        if self.kind in ("simclr", "mocov2plus"):
            loss = contrastive_distill(u1, u2, f1, f2, temperature=self.cfg.distill_temperature)
        elif self.kind == "barlow":
            loss = decorrelative_distill(u1, u2, f1, f2, lamb=self.cfg.barlow_lamb, scale=self.cfg.barlow_scale,
                                         correlation=self.dist.barlow_correlation())
        elif self.kind == "vicreg":
            loss = predictive_mse_distill(u1, u2, f1, f2)
        else:
            loss = predictive_distill(u1, u2, f1, f2)
        loss = self.weight * loss
        return loss, {"cassle": loss.detach()}
