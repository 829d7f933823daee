"""CaSSLe distillation losses (DonkeyShot21/cassle:cassle/distillers/*.py, csm9493/PNR copies).

All take the distill-predictor outputs ``u_v`` (or ``p_v``) of the current projector output of view v and the
frozen model's projector output ``f_v``, shapes (B, D). The frozen side is detached here (the anchor computes it
under ``no_grad``). The caller adds ``lambda * L_distill`` to the SSL loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape
from fastpnr.losses.barlow import barlow_loss
from fastpnr.losses.byol import byol_loss
from fastpnr.losses.infonce import multi_block_infonce


def predictive_distill(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """``1/2 sum_v mean_i (2 - 2 cos(u_v,i, sg f_v,i))`` (``predictive``, used with BYOL)."""
    check_same_shape(("u1", "u2", "f1", "f2"), u1, u2, f1, f2)
    return 0.5 * (byol_loss(u1, f1.detach()) + byol_loss(u2, f2.detach()))


def predictive_mse_distill(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """``1/2 sum_v MSE(u_v, sg f_v)``, MSE the mean over N*D elements (``predictive_mse``, used with VICReg)."""
    check_same_shape(("u1", "u2", "f1", "f2"), u1, u2, f1, f2)
    return 0.5 * (F.mse_loss(u1, f1.detach()) + F.mse_loss(u2, f2.detach()))


def decorrelative_distill(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
                          lamb: float, scale: float, correlation=None) -> torch.Tensor:
    """``1/2 sum_v BT(u_v, sg f_v; lamb, scale)`` with ``BT = barlow_loss`` (``decorrelative``, used with Barlow);
    ``correlation``: BT's C (``barlow_loss``)."""
    check_same_shape(("u1", "u2", "f1", "f2"), u1, u2, f1, f2)
    return 0.5 * (barlow_loss(u1, f1.detach(), lamb, scale, correlation)
                  + barlow_loss(u2, f2.detach(), lamb, scale, correlation))


def contrastive_distill(p1: torch.Tensor, p2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """``1/2 [SD(P, F) + SD(F, P)]`` with ``P = n([p1; p2])``, ``F = sg n([f1; f2])`` (2B, D).

    ``SD(A, B) = mean_i -log( e^{A_i.B_i/t} / sum_k e^{A_i.B_k/t} )``: no mask, the positive stays in its
    denominator (the anchor's ``logit_mask`` is all ones: ``simclr_distill_loss_func``). Inputs unnormalized.
    """
    check_same_shape(("p1", "p2", "f1", "f2"), p1, p2, f1, f2)
    p = F.normalize(torch.cat([p1, p2], dim=0), dim=-1)
    f = F.normalize(torch.cat([f1, f2], dim=0), dim=-1).detach()
    # The positive B_i is already row i of the single key block, hence positive_in_denominator=False.
    sd_pf = multi_block_infonce(p, f, [f], temperature, exclude_diagonal=[False], positive_in_denominator=False)
    sd_fp = multi_block_infonce(f, p, [p], temperature, exclude_diagonal=[False], positive_in_denominator=False)
    return 0.5 * (sd_pf + sd_fp)
