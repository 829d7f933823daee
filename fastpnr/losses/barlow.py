"""Barlow Twins loss (csm9493/PNR:cassle/losses/barlow.py::barlow_loss_func)."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from fastpnr.errors import require
from fastpnr.losses._checks import check_min_rows, check_nonnegative, check_same_shape

BN_EPS = 1e-5  # torch.nn.BatchNorm1d's default, used by the anchor's fresh affine-free BN


def batch_standardize(z: torch.Tensor) -> torch.Tensor:
    """``(z - mean_n z) / sqrt(Var_n z + 1e-5)`` per column with the biased variance: BatchNorm1d(affine=False) in train mode."""
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + BN_EPS)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``C = z1n^T z2n / N`` (D, D) of the batch standardizations of ``z1``, ``z2`` (N, D)."""
    return batch_standardize(z1).transpose(0, 1) @ batch_standardize(z2) / z1.shape[0]


def official_ddp_correlation(z1: torch.Tensor, z2: torch.Tensor, gpus: int, world_size: int = 1,
                             all_reduce_sum: Optional[Callable] = None) -> torch.Tensor:
    """C as the anchor computes it on ``gpus`` GPUs under DDP (``cassle/losses/barlow.py::barlow_loss_func``): each
    GPU standardizes its own rows, ``dist.all_reduce(corr)`` (outside autograd) then ``corr /= world_size`` (inside),
    and DDP averages the gradients. The value is the mean of the GPUs' C; the gradient w.r.t. each GPU's C is 1/gpus
    of that value's, so after DDP's mean every Barlow gradient is 1/gpus of the gradient of the mean C.

    This process holds ``gpus / world_size`` of those GPUs' rows (``z1``, ``z2``: its rows, cut in equal parts);
    ``all_reduce_sum`` sums a tensor over the processes (None: one process). fastpnr's own trainer averages the
    processes' gradients, so each part's C enters with weight ``world_size / gpus**2``."""
    require(gpus % world_size == 0, "dist.barlow_gpus", gpus, f"a multiple of the world size {world_size}")
    parts = gpus // world_size
    require(z1.shape[0] % parts == 0 and z1.shape[0] // parts >= 2, "dist.barlow_gpus", gpus,
            f"a divisor of the batch ({z1.shape[0] * world_size} rows) leaving >= 2 rows per GPU")
    c = sum(cross_correlation(a, b) for a, b in zip(z1.chunk(parts), z2.chunk(parts)))
    total = c.detach() if all_reduce_sum is None else all_reduce_sum(c.detach())
    weighted = c * (world_size / gpus ** 2)
    return weighted + (total / gpus - weighted).detach()


def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lamb: float, scale: float,
                correlation: Optional[Callable] = None) -> torch.Tensor:
    """``L = scale * [ sum_i (1 - C_ii)^2 + lamb * sum_{i != j} C_ij^2 ]``, ``C = z1n^T z2n / N`` (D, D).

    Shapes: ``z1``, ``z2`` (N, D); ``z1n``, ``z2n`` are their batch standardizations. The anchor all-reduces
    (averages) C across GPUs outside autograd; this function is the single-process value unless ``correlation``
    (``(z1, z2) -> C``, e.g. ``official_ddp_correlation``) computes C otherwise.
    """
    check_same_shape(("z1", "z2"), z1, z2)
    check_min_rows("z1", z1, 2)
    check_nonnegative("lamb", lamb)
    check_nonnegative("scale", scale)
    d = z1.shape[1]
    c = cross_correlation(z1, z2) if correlation is None else correlation(z1, z2)
    eye = torch.eye(d, dtype=torch.bool, device=c.device)
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = c.pow(2).masked_fill(eye, 0).sum()
    return scale * (on_diag + lamb * off_diag)
