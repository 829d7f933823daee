"""Building blocks for the independent restatements in these tests: per-row Python loops in float64.

Nothing here imports fastpnr.losses, so a bug there cannot hide in the reference.
"""
from __future__ import annotations

import torch

TOL = {"rtol": 1e-9, "atol": 1e-11}

def rand(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)

def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()

def norm(a: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(dot(a, a))

def unit_rows(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[i] / norm(x[i]) for i in range(x.shape[0])]

def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return dot(a, b) / (norm(a) * norm(b))

def mean(values) -> torch.Tensor:
    values = list(values)
    return sum(values) / len(values)

def log_sum_exp(values) -> torch.Tensor:
    """log(sum(exp(v))) summed term by term (float64 keeps the small test logits exact enough)."""
    return torch.log(sum(torch.exp(v) for v in values))

def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, d = a.shape
    return sum((a[i, j] - b[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

def grads(loss: torch.Tensor, inputs) -> list:
    return list(torch.autograd.grad(loss, list(inputs), allow_unused=True, retain_graph=True))

def assert_close(actual, expected, **tol) -> None:
    tol = tol or TOL
    torch.testing.assert_close(actual, expected, **tol)

def assert_values_and_grads(ours: torch.Tensor, ref: torch.Tensor, inputs, **tol) -> None:
    """Same value, and the same gradient w.r.t. every tensor in ``inputs`` (all must get one)."""
    assert ours.dim() == 0 and ours.dtype == torch.float64
    assert_close(ours, ref, **tol)
    for g_ours, g_ref in zip(grads(ours, inputs), grads(ref, inputs)):
        assert g_ours is not None and g_ref is not None
        assert_close(g_ours, g_ref, **tol)

def assert_no_grad(loss: torch.Tensor, inputs) -> None:
    """``loss`` does not depend on ``inputs`` through the graph (stop-gradient inside)."""
    for g in grads(loss, inputs):
        assert g is None

def one_line(exc) -> bool:
    return "\n" not in str(exc.value) and len(str(exc.value)) > 0

__all__ = ["TOL", "rand", "dot", "norm", "unit_rows", "cos", "mean", "log_sum_exp", "mse", "grads",
           "assert_close", "assert_values_and_grads", "assert_no_grad", "one_line"]
