"""MoCo v2+ InfoNCE with a queue (csm9493/PNR:cassle/losses/moco.py)."""
from __future__ import annotations

import torch

from fastpnr.errors import require
from fastpnr.losses._checks import check_2d, check_same_shape
from fastpnr.losses.infonce import multi_block_infonce


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float,
              backend: str = "torch") -> torch.Tensor:
    """Mean over rows of ``CE(q; k+, queue)``.

    ``loss = mean_i -log( e^{q_i.k_i/t} / (e^{q_i.k_i/t} + sum_n e^{q_i.queue_n/t}) )``.
    Shapes: ``q``, ``k`` (B, D), ``queue`` (K, D), all already L2-normalized. ``k`` and ``queue`` are
    detached here (EMA keys and a buffer: the gradient flows through ``q`` only). The MoCo method computes
    ``1/2 [moco_loss(q1, k2, Q[1]) + moco_loss(q2, k1, Q[0])]``.
    """
    check_same_shape(("q", "k"), q, k)
    check_2d("queue", queue)
    require(queue.shape[1] == q.shape[1], "queue.shape", tuple(queue.shape), f"(K, {q.shape[1]}) with q's D")
    return multi_block_infonce(q, k.detach(), [queue.detach()], temperature, exclude_diagonal=[False],
                               positive_in_denominator=True, backend=backend)
