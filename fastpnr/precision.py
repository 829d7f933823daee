"""A run's numeric precision (``train.precision``): the step's autocast dtype, the weights' dtype, the loss upcast.

bf16 / fp16 autocast the step over float32 weights (the losses upcast their inputs to float32); fp32 runs it in
float32; fp64 keeps weights, views and losses in float64: rounding ~1e-16 instead of ~1e-7, so two runs that sum
in another order (2 ranks vs one process) agree to ~1e-12 after many steps instead of diverging chaotically
(exactness checks on CPU; ~4x slower than fp32 there).
"""
from __future__ import annotations

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, "fp64": None}
PARAM_DTYPES = {"bf16": torch.float32, "fp16": torch.float32, "fp32": torch.float32, "fp64": torch.float64}


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least: autocast's bf16/fp16 outputs become float32; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
