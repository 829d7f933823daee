"""CLA's alignment loss (Cignoni et al., "CLA: Latent Alignment for Online Continual Self-Supervised Learning",
CoLLAs 2025, arXiv 2507.10434): the method's own SSL loss between the predicted current projection and the "past"
one, in the form CaSSLe distils with (``fastpnr.losses.cassle``), so that it serves every method:

    L = L_SSL(x) + omega * L_align,   L_align = L_kind(g(z_1), g(z_2); sg z'_1, sg z'_2)

with g the small MLP predictor of the current projections z_v, z'_v the past projections (CLA-E: the EMA model's of
the same views; CLA-R: each replayed image's projection stored when it entered the buffer, the same for both views),
and L_kind by the method's family: contrastive (SimCLR, MoCo) the InfoNCE of ``contrastive_distill``; predictive
(BYOL, SimSiam, GSG) the negative cosine of ``predictive_distill``; decorrelative (Barlow) the Barlow Twins loss;
predictive_mse (VICReg) the MSE.
"""
from __future__ import annotations

import torch

from fastpnr.losses.cassle import contrastive_distill, decorrelative_distill, predictive_distill, predictive_mse_distill

CONTRASTIVE = ("simclr", "mocov2plus")


def alignment_loss(kind: str, u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, *,
                   temperature: float, barlow_lamb: float, barlow_scale: float, correlation=None) -> torch.Tensor:
    """``L_kind(u_1, u_2; sg f_1, sg f_2)`` (module docstring): ``u_v`` the predicted current projections, ``f_v``
    the past ones, (B, D) each; ``kind`` a method family (``regularizers.base.method_kind``); ``correlation``:
    Barlow Twins' C (``barlow_loss``)."""
    if kind in CONTRASTIVE:
        return contrastive_distill(u1, u2, f1, f2, temperature=temperature)
    if kind == "barlow":
        return decorrelative_distill(u1, u2, f1, f2, lamb=barlow_lamb, scale=barlow_scale, correlation=correlation)
    if kind == "vicreg":
        return predictive_mse_distill(u1, u2, f1, f2)
    return predictive_distill(u1, u2, f1, f2)
