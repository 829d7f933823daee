"""Cheap argument checks shared by the losses: shapes and floats only, never tensor values (no host sync)."""
from __future__ import annotations

import numbers

import torch

from fastpnr.errors import require


def check_2d(name: str, x: torch.Tensor) -> None:
    """``x`` must be a 2-D ``(N, D)`` tensor."""
    require(isinstance(x, torch.Tensor) and x.dim() == 2, f"{name}.shape",
            tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__, "a 2-D (N, D) tensor")


def check_same_shape(names: tuple[str, ...], *xs: torch.Tensor) -> None:
    """Every tensor is ``(N, D)`` with the shape of the first one."""
    check_2d(names[0], xs[0])
    for name, x in zip(names[1:], xs[1:]):
        check_2d(name, x)
        require(x.shape == xs[0].shape, f"{name}.shape", tuple(x.shape),
                f"equal to {names[0]}.shape {tuple(xs[0].shape)}")


def check_min_rows(name: str, x: torch.Tensor, n: int) -> None:
    """Batch statistics need at least ``n`` rows."""
    require(x.shape[0] >= n, f"{name}.shape", tuple(x.shape), f"at least {n} rows (batch statistics)")


def check_positive(name: str, value) -> None:
    """A temperature (or scale) must be a real number > 0; a tensor is passed through unchecked (no sync)."""
    if isinstance(value, torch.Tensor):
        return
    require(isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0, name, value, "a number > 0")


def check_nonnegative(name: str, value) -> None:
    """A loss weight must be a real number >= 0; a tensor is passed through unchecked (no sync)."""
    if isinstance(value, torch.Tensor):
        return
    require(isinstance(value, numbers.Real) and not isinstance(value, bool) and value >= 0, name, value, "a number >= 0")
