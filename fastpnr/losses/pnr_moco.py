"""MoCo v2+ + PNR: symmetric queue pseudo-negatives (csm9493/PNR:cassle/losses/pnr.py::moco_pnr_loss_func)."""
from __future__ import annotations

import torch

from fastpnr.errors import require
from fastpnr.losses._checks import check_2d, check_positive, check_same_shape
from fastpnr.losses.infonce import multi_block_infonce


def pnr_moco_loss(q: torch.Tensor, k: torch.Tensor, p: torch.Tensor, f: torch.Tensor, queue: torch.Tensor,
                  frozen_queue: torch.Tensor, temperature: float, distill_temperature: float,
                  backend: str = "torch") -> torch.Tensor:
    """One view's ``mean_i l_main,i + mean_i l_reg,i`` with negatives ``N = queue ∪ frozen_queue`` in both terms.

    ``l_main,i = -log e^{q_i.k_i/t}   / ( e^{q_i.k_i/t}   + sum_{n in N} e^{q_i.n/t} )``     t   = temperature
    ``l_reg,i  = -log e^{p_i.f_i/t_d} / ( e^{p_i.f_i/t_d} + sum_{n in N} e^{p_i.n/t_d} )``   t_d = distill_temperature

    Shapes: ``q``, ``k``, ``p``, ``f`` (B, D); ``queue``, ``frozen_queue`` (K, D); all already L2-normalized.
    ``k`` is the other view's EMA key, ``f`` the frozen embedding of the same view, ``p`` the distill predictor
    of ``q``. Gradients flow through ``q`` and ``p`` only: ``k``, ``f`` and both queues are detached here.
    The symmetry: the main term gets the past model's queue as extra negatives, the regularizer the current
    EMA queue. The anchor's ``loss_alpha`` is ignored there, so the weights are 1 : 1. The MoCo-PNR method
    calls this per view with the pre-update queues of the other view and averages the two views.
    """
    check_same_shape(("q", "k", "p", "f"), q, k, p, f)
    check_positive("distill_temperature", distill_temperature)
    d = q.shape[1]
    for name, qu in (("queue", queue), ("frozen_queue", frozen_queue)):
        check_2d(name, qu)
        require(qu.shape[1] == d, f"{name}.shape", tuple(qu.shape), f"(K, {d}) with q's D")
    negatives = [queue.detach(), frozen_queue.detach()]
    main = multi_block_infonce(q, k.detach(), negatives, temperature, exclude_diagonal=[False, False],
                               positive_in_denominator=True, backend=backend)
    reg = multi_block_infonce(p, f.detach(), negatives, distill_temperature, exclude_diagonal=[False, False],
                              positive_in_denominator=True, backend=backend)
    return main + reg
