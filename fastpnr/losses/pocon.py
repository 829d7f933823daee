"""POCON's adaptation and retrospection distances (Gomez-Villa et al., WACV 2024; alviur/pocon_wacv2024
src/approach/sslModels.py L160-161, L182-184).

Each term is a Frobenius distance between L2-normalized (row-wise) batches, summed over the two views: not a mean
over the batch (``torch.dist`` of the whole (N, D) matrices). The caller weights it (lambda_exp, lambda_ret).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape


def pocon_distill(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
    """``||n(p1) - n(sg t1)||_F + ||n(p2) - n(sg t2)||_F`` with ``n`` the row-wise L2 normalization (eps 1e-12, as
    ``F.normalize``): ``p_v`` the projected current backbone features of view v, ``t_v`` the target (the frozen
    expert's or the previous backbone's features of the same view), all (N, D)."""
    check_same_shape(("p1", "p2", "t1", "t2"), p1, p2, t1, t2)
    d1 = F.normalize(p1, dim=1) - F.normalize(t1.detach(), dim=1)
    d2 = F.normalize(p2, dim=1) - F.normalize(t2.detach(), dim=1)
    return torch.linalg.vector_norm(d1) + torch.linalg.vector_norm(d2)
