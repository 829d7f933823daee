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

import torch

from ..losses import alignment_loss
from fastpnr.system.precision import upcast
from .base import DistillRegularizer
from ..regularizer_configs import CaSSLeConfig

DEFAULT_WEIGHT = {"vicreg": 25.0}


class CaSSLe(DistillRegularizer):
    def __init__(self, cfg: CaSSLeConfig, method):
        super().__init__(cfg, method)
        self.weight = DEFAULT_WEIGHT.get(self.kind, 1.0) if cfg.weight is None else cfg.weight
        self.distill_weight = self.weight

    log_name = "cassle"  # the logged term

    def penalty(self, method, out, frozen_out):
        loss = self.weight * self.aligned(self.predict(method, out), frozen_out["z"])
        return loss, {self.log_name: loss.detach()}

    def aligned(self, predicted, past) -> torch.Tensor:
        """The distillation (alignment) loss of the predicted current projections to the past ones (two views)."""
        f1, f2 = (upcast(f) for f in past)
        u1, u2 = (upcast(u) for u in predicted)
        if self.kind in ("simclr", "mocov2plus"):  # batch-coupled: the global batch
            u1, u2, f1, f2 = self.dist.loss_batch(u1, u2, f1, f2)
        elif self.kind == "barlow":  # as the official code on dist.barlow_gpus GPUs when set
            u1, u2, f1, f2 = self.dist.barlow_batch(u1, u2, f1, f2)
        return alignment_loss(self.kind, u1, u2, f1, f2, temperature=self.cfg.distill_temperature,
                              barlow_lamb=self.cfg.barlow_lamb, barlow_scale=self.cfg.barlow_scale,
                              correlation=self.dist.barlow_correlation() if self.kind == "barlow" else None,
                              criterion=getattr(self.cfg, "align_criterion", "ssl"))
