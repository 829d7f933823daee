"""Barlow Twins loss (csm9493/PNR:cassle/losses/barlow.py::barlow_loss_func)."""
from __future__ import annotations

import torch

from fastpnr.losses._checks import check_min_rows, check_nonnegative, check_same_shape

BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default, used by the anchor's fresh affine-free BN


def batch_standardize(z: torch.Tensor) -> torch.Tensor:
    """``(z - mean_n z) / sqrt(Var_n z + 1e-5)`` per column with the biased variance: BatchNorm1d(affine=False) in train mode."""
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + BN_EPS)


def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lamb: float, scale: float) -> torch.Tensor:
    """``L = scale * [ sum_i (1 - C_ii)^2 + lamb * sum_{i != j} C_ij^2 ]``, ``C = z1n^T z2n / N`` (D, D).

    Shapes: ``z1``, ``z2`` (N, D); ``z1n``, ``z2n`` are their batch standardizations. The anchor all-reduces
    (averages) C across GPUs; this function is the single-process value.
    """
    check_same_shape(("z1", "z2"), z1, z2)
    check_min_rows("z1", z1, 2)
    check_nonnegative("lamb", lamb)
    check_nonnegative("scale", scale)
    n, d = z1.shape
    c = batch_standardize(z1).transpose(0, 1) @ batch_standardize(z2) / n
    eye = torch.eye(d, dtype=torch.bool, device=c.device)
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = c.pow(2).masked_fill(eye, 0).sum()
    return scale * (on_diag + lamb * off_diag)
