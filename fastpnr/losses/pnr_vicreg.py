"""VICReg + PNR regularizer (csm9493/PNR:cassle/distillers/vicreg_pnr.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.errors import require
from fastpnr.losses._checks import check_nonnegative, check_same_shape


def pnr_vicreg_terms(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
                     pos_weight: float, neg_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(pull, push), the regularizer being ``pull - push`` =
    ``pos_weight * 1/2 [MSE(u1, f1) + MSE(u2, f2)] - neg_weight * 1/2 [MSE(u1, f2) + MSE(u2, f1)]``.

    MSE is the mean over the N*D elements; shapes (B, D); ``f`` is detached here. Anchor weights
    ``distill_lamb`` 25, ``negative_lamb`` 23 (CIFAR). In ``u`` the objective's leading term is
    ``(pos_weight - neg_weight) |u|^2``: it is bounded below only if ``neg_weight < pos_weight``, checked here
    (the anchor does not check).
    """
    check_same_shape(("u1", "u2", "f1", "f2"), u1, u2, f1, f2)
    check_nonnegative("pos_weight", pos_weight)
    check_nonnegative("neg_weight", neg_weight)
    if not isinstance(pos_weight, torch.Tensor) and not isinstance(neg_weight, torch.Tensor):
        require(neg_weight < pos_weight, "neg_weight", neg_weight,
                f"< pos_weight={pos_weight!r} (otherwise the loss is unbounded below)")
    f1, f2 = f1.detach(), f2.detach()
    positive = 0.5 * (F.mse_loss(u1, f1) + F.mse_loss(u2, f2))
    negative = 0.5 * (F.mse_loss(u1, f2) + F.mse_loss(u2, f1))
    return pos_weight * positive, neg_weight * negative


def pnr_vicreg_regularizer(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
                           pos_weight: float, neg_weight: float) -> torch.Tensor:
    """``pull - push`` of ``pnr_vicreg_terms``: the regularizer added to the method's loss."""
    pull, push = pnr_vicreg_terms(u1, u2, f1, f2, pos_weight, neg_weight)
    return pull - push
