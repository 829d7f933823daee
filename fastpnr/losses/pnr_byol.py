"""BYOL + PNR regularizer: asymmetric pseudo-negatives (csm9493/PNR:cassle/distillers/byol_pnr.py)."""
from __future__ import annotations

import torch

from fastpnr.losses._checks import check_nonnegative, check_same_shape
from fastpnr.losses.byol import byol_loss


def pnr_byol_terms(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
                   pos_weight: float, neg_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pull, push), the regularizer being ``pull - push`` =
    ``pos_weight * 1/2 [D(u1, f1) + D(u2, f2)] - neg_weight * 1/2 [D(u1, f2) + D(u2, f1)]``.

    ``D(a, b) = mean_i (2 - 2 cos(a_i, sg b_i))``. Shapes (B, D): ``u_v`` the distill predictor of the
    projector output of view v, ``f_v`` the frozen model's projector output (detached here). The pseudo-negative
    of view v is the past model's embedding of the other view of the same image. Weights: anchor
    ``distill_lamb`` (1) and ``negative_lamb`` (CIFAR 0.5); the -D term is bounded (cos >= -1).
    The BYOL loss itself is unchanged and added by the caller.
    """
    check_same_shape(("u1", "u2", "f1", "f2"), u1, u2, f1, f2)
    check_nonnegative("pos_weight", pos_weight)
    check_nonnegative("neg_weight", neg_weight)
    f1, f2 = f1.detach(), f2.detach()
    positive = 0.5 * (byol_loss(u1, f1) + byol_loss(u2, f2))
    negative = 0.5 * (byol_loss(u1, f2) + byol_loss(u2, f1))
    return pos_weight * positive, neg_weight * negative


def pnr_byol_regularizer(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
                         pos_weight: float, neg_weight: float) -> torch.Tensor:
    """``pull - push`` of ``pnr_byol_terms``: the regularizer added to the method's loss."""
    pull, push = pnr_byol_terms(u1, u2, f1, f2, pos_weight, neg_weight)
    return pull - push
