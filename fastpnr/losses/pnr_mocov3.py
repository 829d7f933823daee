"""MoCo v3 + PNR: symmetric in-batch pseudo-negatives. fastpnr's own combination (no anchor has MoCo v3 + PNR): the
queue form of MoCo-PNR (``pnr_moco.py``) with MoCo v3's in-batch keys in place of the queues."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_positive, check_same_shape
from fastpnr.losses.infonce import multi_block_infonce


def pnr_mocov3_direction(q: torch.Tensor, k: torch.Tensor, p: torch.Tensor, f: torch.Tensor, f_other: torch.Tensor,
                         temperature: float, distill_temperature: float, backend: str = "torch") -> torch.Tensor:
    """One direction: ``2t mean_i l_main,i + 2t_d mean_i l_reg,i`` over the negatives ``N = {K_j} ∪ {G_j}``.

    ``l_main,i = -log e^{Q_i.K_i/t}   / ( sum_j e^{Q_i.K_j/t} + sum_{j != i} e^{Q_i.G_j/t} )``
    ``l_reg,i  = -log e^{P_i.F_i/t_d} / ( e^{P_i.F_i/t_d} + sum_{j != i} e^{P_i.K_j/t_d} + sum_{j != i} e^{P_i.G_j/t_d} )``

    with ``Q = n(q)`` this view's queries, ``K = n(k)`` the other view's momentum keys, ``P = n(p)`` the distill
    predictor of this view, ``F = n(f)`` the frozen model's embedding of this view, ``G = n(f_other)`` the frozen
    model's embedding of the other view (the pseudo-negatives of the main term); n = row-wise L2 normalization.
    As in MoCo-PNR the main term gets the past model's embeddings of the keys' view as extra negatives and the
    regularizer the current keys; a sample is never its own negative (its ``G_i`` and ``K_i`` are dropped where they
    are not the positive; the queue form never holds the current batch). Shapes: all (B, D), unnormalized;
    ``k``, ``f``, ``f_other`` are detached here, gradients flow through ``q`` and ``p``.
    """
    check_same_shape(("q", "k", "p", "f", "f_other"), q, k, p, f, f_other)
    check_positive("distill_temperature", distill_temperature)
    q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
    k, f, g = (F.normalize(x.detach(), dim=-1) for x in (k, f, f_other))
    main = multi_block_infonce(q, k, [k, g], temperature, exclude_diagonal=[False, True],
                               positive_in_denominator=False, backend=backend)
    reg = multi_block_infonce(p, f, [k, g], distill_temperature, exclude_diagonal=[True, True],
                              positive_in_denominator=True, backend=backend)
    return 2 * temperature * main + 2 * distill_temperature * reg


def pnr_mocov3_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, p1: torch.Tensor,
                    p2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, temperature: float,
                    distill_temperature: float, backend: str = "torch") -> torch.Tensor:
    """Both directions, as MoCo v3 sums them: ``pnr_mocov3_direction(q1, k2, p1, f1, f2) +
    pnr_mocov3_direction(q2, k1, p2, f2, f1)``. Without the frozen terms the main terms are ``mocov3_loss``; the
    regularizer is weighted 1 : 1 with them, as in MoCo-PNR. Under torchrun the caller passes the global batch."""
    kw = dict(temperature=temperature, distill_temperature=distill_temperature, backend=backend)
    return pnr_mocov3_direction(q1, k2, p1, f1, f2, **kw) + pnr_mocov3_direction(q2, k1, p2, f2, f1, **kw)
