"""CLA's alignment loss (Cignoni et al., "CLA: Latent Alignment for Online Continual Self-Supervised Learning",
CoLLAs 2025, arXiv 2507.10434): the method's own SSL loss between the predicted current projection and the "past"
one, in the form CaSSLe distils with (``fastpnr.losses.cassle``), so that it serves every method:

    L = L_SSL(x) + omega * L_align,   L_align = L_kind(g(z_1), g(z_2); sg z'_1, sg z'_2)

with g the small MLP predictor of the current projections z_v, z'_v the past projections (CLA-E: the EMA model's of
the same views; CLA-R: each replayed image's projection stored when it entered the buffer, the same for both views),
and L_kind by the method's family: contrastive (SimCLR, MoCo) the InfoNCE of ``contrastive_distill``; predictive
(BYOL, SimSiam, GSG) the negative cosine of ``predictive_distill``; decorrelative (Barlow) the Barlow Twins loss;
predictive_mse (VICReg) the MSE. ``criterion="cosine"`` (the authors' command-line default) replaces L_kind by the
negative cosine of each row to its past one, for every method:

    L_align = -1/2 sum_v mean_i cos(g(z_v,i), sg z'_v,i)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape
from fastpnr.losses.cassle import contrastive_distill, decorrelative_distill, predictive_distill, predictive_mse_distill

CONTRASTIVE = ("simclr", "mocov2plus")


def alignment_loss(kind: str, u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, *,
                   temperature: float, barlow_lamb: float, barlow_scale: float, correlation=None,
                   criterion: str = "ssl") -> torch.Tensor:
    """``L_kind(u_1, u_2; sg f_1, sg f_2)`` (module docstring): ``u_v`` the predicted current projections, ``f_v``
    the past ones, (B, D) each; ``kind`` a method family (``regularizers.base.method_kind``); ``correlation``:
    Barlow Twins' C (``barlow_loss``); ``criterion`` "cosine": the negative cosine for every kind."""
    if criterion == "cosine":
        return cosine_alignment(u1, u2, f1, f2)
    if kind in CONTRASTIVE:
        return contrastive_distill(u1, u2, f1, f2, temperature=temperature)
    if kind == "barlow":
        return decorrelative_distill(u1, u2, f1, f2, lamb=barlow_lamb, scale=barlow_scale, correlation=correlation)
    if kind == "vicreg":
        return predictive_mse_distill(u1, u2, f1, f2)
    return predictive_distill(u1, u2, f1, f2)


def cosine_alignment(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """``-1/2 sum_v mean_i cos(u_v,i, sg f_v,i)`` (the authors' ``align_criterion='cosine'``)."""
    check_same_shape(("u1", "u2", "f1", "f2"), u1, u2, f1, f2)
    return -0.5 * sum(F.cosine_similarity(u, f.detach(), dim=-1).mean() for u, f in ((u1, f1), (u2, f2)))
