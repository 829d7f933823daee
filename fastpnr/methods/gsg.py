"""Guided Stop-Gradient (anchors §4; bych-lee/gsg): SimSiam-GSG and BYOL-GSG.

Four views per batch: views 0, 1 are image 1's two views; views 2, 3 are the "second image"'s, the same batch
permuted by ``r = randperm(N)`` (``x21 = views[2][r]``, ``x22 = views[3][r]``), so row ``i`` pairs image ``i``
with image ``r(i)``. The permutation is applied to the encoder's outputs of views 2, 3 rather than to its inputs:
the same numbers (per-row ops; each view's BatchNorm sees the same set of rows), and under torchrun ``r`` permutes
the global batch (outputs gathered with their gradient), so the pairs do not depend on the world size. Per row, the
closest cross-image pair of (unnormalized, detached) targets are the sources (predictor side, gradient flows) and
their sibling views the stop-gradient targets (``losses.gsg_loss``).

- SimSiam-GSG: targets are the online projections, detached.
- BYOL-GSG: targets are the EMA encoder's projections (fixed momentum 0.99 in the anchor: base_tau = final_tau =
  0.99, so the base class's cosine schedule is a constant). The anchor updates the EMA at the start of every
  forward; updating after every optimizer step (``after_step``) is the same sequence of weights.
- Both use SimSiam's heads (3-layer projector ending in affine-free BN, bottleneck predictor; anchors §4.2).
- Continual regularizers see the first image's two views only (``distill_input``, ``frozen_forward(views[:2])``)
  and use the BYOL-style asymmetric form (``regularizer_kind = "byol"``): fastpnr's own combination.

``forward_views`` returns lists of 4 (one per view, in the order 11, 12, 21, 22; entries 2, 3 belong to the
permuted batch): ``feats``, ``z`` (online projections), ``p`` (predictions), ``k`` (targets), and ``perm`` (r).
"""
from __future__ import annotations

import torch

from ..errors import FastPNRError
from ..losses import gsg_loss
from fastpnr.system.precision import upcast
from .base import Method
from .simsiam import simsiam_heads, static_predictor_groups


def check_four_views(views: list[torch.Tensor]) -> None:
    if len(views) != 4:
        raise FastPNRError(f"GSG needs 4 views per batch, got {len(views)}; build the loader with num_views=method.num_views")


class _GSG(Method):
    num_views = 4
    regularizer_kind = "byol"  # PNR: the BYOL-style asymmetric regularizer; CaSSLe: the predictive distiller

    def build_heads(self):
        simsiam_heads(self)

    def _online(self, views):
        check_four_views(views)
        out = super().forward_views(views)
        n = views[2].shape[0]
        # r over the batch the loss sees: the global one under torchrun (the per-GPU one with dist.local_loss)
        r = torch.randperm(n if self.dist.local_loss else n * self.dist.world_size, device=views[2].device)
        for key in ("feats", "z"):
            out[key][2:] = [self.second_image(x, r) for x in out[key][2:]]
        out["p"] = [self.predictor(z) for z in out["z"]]
        out["perm"] = r
        return out

    def second_image(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the permuted batch: ``x[r]`` in one process; under torchrun rows ``r[shard]`` of the
        global batch (gathered with the gradient flowing back to the rows' owner ranks)."""
        if not self.dist.enabled or self.dist.local_loss:
            return x[r]
        whole = self.dist.loss_batch(x) if x.requires_grad else self.dist.gather(x)
        return whole[r[self.dist.shard(whole.shape[0])]]

    def distill_input(self, out):
        return out["z"][:2]  # the first image's two online projections

    def ssl_loss(self, out):
        p = [upcast(x) for x in out["p"]]
        k = [upcast(x) for x in out["k"]]
        loss = gsg_loss(*p, *k)
        return loss, {self.cfg.name: loss.detach()}

    def param_groups(self, optim_cfg):
        return static_predictor_groups(self, super().param_groups(optim_cfg))


class SimSiamGSG(_GSG):
    def forward_views(self, views):
        out = self._online(views)
        out["k"] = [z.detach() for z in out["z"]]
        return out


class BYOLGSG(_GSG):
    def build_heads(self):
        super().build_heads()
        self.momentum_backbone = self.make_momentum_copy(self.backbone)
        self.momentum_projector = self.make_momentum_copy(self.projector)

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def step_tau(self, step, total_steps):
        # The GSG anchor updates the target at the start of every forward: after every optimizer step here (see the
        # module docstring), not the PNR anchors' Lightning timing (no update after step 0, tau one step late).
        return self.ema_tau(step, total_steps)

    def forward_views(self, views):
        out = self._online(views)
        with torch.no_grad():
            k = [self.momentum_projector(self.momentum_backbone(v)) for v in views]
        out["k"] = k[:2] + [self.second_image(x, out["perm"]) for x in k[2:]]
        return out
