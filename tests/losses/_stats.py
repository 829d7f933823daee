"""Loop restatements of batch statistics (Barlow, VICReg) shared by several test files."""
from __future__ import annotations

import torch

BN_EPS = 1e-5


def col_mean(z, j):
    return sum(z[i, j] for i in range(z.shape[0])) / z.shape[0]


def standardize(z):
    """BatchNorm1d(affine=False) in train mode: biased variance, eps 1e-5."""
    n, d = z.shape
    cols = []
    for j in range(d):
        m = col_mean(z, j)
        var = sum((z[i, j] - m) ** 2 for i in range(n)) / n
        cols.append(torch.stack([(z[i, j] - m) / torch.sqrt(var + BN_EPS) for i in range(n)]))
    return torch.stack(cols, dim=1)


def barlow(z1, z2, lamb, scale):
    n, d = z1.shape
    a, b = standardize(z1), standardize(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[k, i] * b[k, j] for k in range(n)) / n
            total = total + ((1 - c) ** 2 if i == j else lamb * c ** 2)
    return scale * total


def unbiased_var(z, j):
    m = col_mean(z, j)
    return sum((z[i, j] - m) ** 2 for i in range(z.shape[0])) / (z.shape[0] - 1)


def variance_term(z1, z2):
    total = 0.0
    for z in (z1, z2):
        d = z.shape[1]
        total = total + sum(torch.relu(1 - torch.sqrt(unbiased_var(z, j) + 1e-4)) for j in range(d)) / d
    return total


def covariance_term(z1, z2):
    total = 0.0
    for z in (z1, z2):
        n, d = z.shape
        means = [col_mean(z, j) for j in range(d)]
        for a in range(d):
            for b in range(d):
                if a != b:
                    cov = sum((z[i, a] - means[a]) * (z[i, b] - means[b]) for i in range(n)) / (n - 1)
                    total = total + cov ** 2 / d
    return total
