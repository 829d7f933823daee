"""VICReg loss (csm9493/PNR:cassle/losses/vicreg.py, the solo-learn formulation)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_min_rows, check_same_shape

VAR_EPS = 1e-4


def invariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``MSE(z1, z2)``, the mean over all N*D elements."""
    check_same_shape(("z1", "z2"), z1, z2)
    return F.mse_loss(z1, z2)


def variance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``sum_{v in 1,2} mean_d ReLU(1 - sqrt(Var_n(z_v)_d + 1e-4))``, Var unbiased (torch.var default, as the anchor)."""
    check_same_shape(("z1", "z2"), z1, z2)
    check_min_rows("z1", z1, 2)
    return sum(F.relu(1 - torch.sqrt(z.var(dim=0) + VAR_EPS)).mean() for z in (z1, z2))


def covariance_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``sum_{v in 1,2} sum_{i != j} Cov(z_v)_ij^2 / D``, ``Cov = zc^T zc / (N - 1)`` with zc the centred batch."""
    check_same_shape(("z1", "z2"), z1, z2)
    check_min_rows("z1", z1, 2)
    n, d = z1.shape
    eye = torch.eye(d, dtype=torch.bool, device=z1.device)
    total = z1.new_zeros(())
    for z in (z1, z2):
        zc = z - z.mean(dim=0)
        cov = zc.transpose(0, 1) @ zc / (n - 1)
        total = total + cov.pow(2).masked_fill(eye, 0).sum() / d
    return total


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float, var_weight: float,
                cov_weight: float) -> torch.Tensor:
    """``sim_weight * invariance + var_weight * variance + cov_weight * covariance``; shapes (N, D); anchor 25/25/1."""
    return (sim_weight * invariance_loss(z1, z2) + var_weight * variance_loss(z1, z2)
            + cov_weight * covariance_loss(z1, z2))
