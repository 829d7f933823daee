"""Fused kernels with PyTorch references. ``infonce``: multi-block InfoNCE (Triton on CUDA, reference elsewhere)."""
from kernels.infonce import infonce, reference_infonce

__all__ = ["infonce", "reference_infonce"]
