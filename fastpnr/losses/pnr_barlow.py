"""Barlow Twins + PNR regularizer (csm9493/PNR:cassle/distillers/barlow_pnr.py)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from fastpnr.losses._checks import check_nonnegative, check_same_shape
from fastpnr.losses.barlow import barlow_loss
from fastpnr.losses.simsiam import simsiam_loss


def pnr_barlow_terms(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
                     pos_weight: float, neg_weight: float, lamb: float, scale: float,
                     correlation: Optional[Callable] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pull, push), the regularizer being ``pull - push`` =
    ``pos_weight * 1/2 [BT(u1, f1) + BT(u2, f2)] - neg_weight * 1/2 [-cos(u1, sg f2) - cos(u2, sg f1)]``.

    ``BT`` is ``barlow_loss(., ., lamb, scale)`` (anchor ``distill_barlow_lamb`` 5e-3, ``distill_scale_loss`` 0.1);
    ``cos`` is the batch-mean cosine (the anchor's ``simsiam_loss_func``), so the negative term is
    ``+neg_weight * mean cos`` and bounded. Shapes (B, D); ``f`` is detached here. ``correlation``: BT's C
    (``barlow_loss``), the negative term being a per-sample mean whatever it is.
    """
    check_same_shape(("u1", "u2", "f1", "f2"), u1, u2, f1, f2)
    check_nonnegative("pos_weight", pos_weight)
    check_nonnegative("neg_weight", neg_weight)
    f1, f2 = f1.detach(), f2.detach()
    positive = 0.5 * (barlow_loss(u1, f1, lamb, scale, correlation) + barlow_loss(u2, f2, lamb, scale, correlation))
    negative = 0.5 * (simsiam_loss(u1, f2) + simsiam_loss(u2, f1))
    return pos_weight * positive, neg_weight * negative


def pnr_barlow_regularizer(u1: torch.Tensor, u2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor,
                           pos_weight: float, neg_weight: float, lamb: float, scale: float) -> torch.Tensor:
    """``pull - push`` of ``pnr_barlow_terms``: the regularizer added to the method's loss."""
    pull, push = pnr_barlow_terms(u1, u2, f1, f2, pos_weight, neg_weight, lamb, scale)
    return pull - push
