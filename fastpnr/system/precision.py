"""A run's numeric precision (``train.precision``): the step's autocast dtype, the weights' dtype, the loss upcast.

bf16 / fp16 autocast the step over float32 weights (the losses upcast their inputs to float32); fp32 runs it in
float32; fp64 keeps weights, views and losses in float64: rounding ~1e-16 instead of ~1e-7, so two runs that sum
in another order (2 ranks vs one process) agree to ~1e-12 after many steps instead of diverging chaotically
(exactness checks on CPU; ~4x slower than fp32 there).

auto (the default) is bf16 on CUDA, and on a CPU bf16 only with AMX (its bf16 tile matmuls), else fp32: without
native bf16 oneDNN emulates every bf16 convolution, 16x slower than fp32 on an AVX2 EPYC (issue 37); with AVX512-BF16
alone (a 2-core AVX512-BF16 EPYC, BENCHMARKS.md) the main job's bf16 step took 2.18 CPU-s with 2 threads against
0.51 for fp32 (16 vs 114 img/s; 1 thread: bf16 0.30 CPU-s, 86 img/s), so fp32 with every core is the faster default.
"""
from __future__ import annotations

import torch


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, "fp64": None}
PARAM_DTYPES = {"auto": torch.float32, "bf16": torch.float32, "fp16": torch.float32, "fp32": torch.float32,
                "fp64": torch.float64}


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least: autocast's bf16/fp16 outputs become float32; float32 and float64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def native_cpu_bf16() -> str | None:
    """The instructions with which this CPU computes bf16 natively ("AMX", "AVX512-BF16"), else None (torch's checks:
    ``torch.cpu._is_amx_tile_supported``, ``_is_avx512_bf16_supported``; a torch without them: None)."""
    cpu = getattr(torch, "cpu", None)
    for name, check in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported")):
        probe = getattr(cpu, check, None)
        if probe is not None and probe():
            return name
    return None


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """(the precision a run uses, why): ``auto`` becomes bf16 on CUDA, bf16 on a CPU with AMX, else fp32; an explicit
    precision stays as it is (reason "")."""
    if precision != "auto":
        return precision, ""
    if device.type == "cuda":
        return "bf16", "auto: a CUDA device"
    isa, capability = native_cpu_bf16(), torch.backends.cpu.get_cpu_capability()
    if isa == "AMX":
        return "bf16", f"auto: this CPU runs bf16 natively (AMX, torch reports {capability})"
    if isa is not None:
        return "fp32", (f"auto: this CPU has {isa} but no AMX (torch reports {capability}); there bf16 with 2 threads "
                        "was 4x the CPU time of fp32")
    return "fp32", (f"auto: this CPU has no native bf16 (no AMX or AVX512-BF16; torch reports {capability}), where "
                    "bf16 convolutions are emulated and slower")


def autocast_dtype(precision: str, device: torch.device):
    """The step's autocast dtype for ``precision`` on ``device`` (None: no autocast); ``auto`` resolved first."""
    return AUTOCAST_DTYPES[resolve_precision(precision, device)[0]]
