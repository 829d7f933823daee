"""Compile the InfoNCE kernels ahead of time for an NVIDIA architecture, on any machine: no GPU is needed.

Triton's compiler and the ``ptxas``/``cuobjdump`` it ships build the real sm_90 (H100) cubins of every launch
variant the loss uses and report what the hardware will see: registers per thread, bytes spilled to local memory,
shared memory, and the resulting number of resident programs per SM. The interpreter tests check the arithmetic;
this checks that the kernels compile for the GPU, with the tile sizes ``_launch_config`` picks, without spills.

    python -m kernels.aot                 # sm_90; float32 (3xTF32 and TF32 dots) and bfloat16; D = 128
    python -m kernels.aot --arch 100 --dims 64,128,256

It must run without ``TRITON_INTERPRET=1`` (the interpreter swaps Triton's language functions for Python ones).
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch

# H100 (sm_90) per-SM limits, for the occupancy column
REGISTERS_PER_SM = 65_536
SHARED_BYTES_PER_SM = 228 * 1024
MAX_THREADS_PER_SM = 2_048

# pointer arguments and their element type: "in" = the inputs' dtype, "f32" = float32 work buffers
_POINTERS = {"A": "in", "P": "in", "K": "in", "DK": "in", "POS": "f32", "LSE": "f32", "PART": "f32",
             "COEF": "f32", "WS": "f32"}
_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class Resources:
    kernel: str
    dtype: str
    dim: int
    constexprs: str
    registers: int
    spill_bytes: int       # local memory per thread: anything but 0 means register spills
    shared_bytes: int
    num_warps: int

    @property
    def programs_per_sm(self) -> int:
        """Resident programs per SM allowed by registers, shared memory and threads (an upper bound)."""
        threads = 32 * self.num_warps
        by_regs = REGISTERS_PER_SM // max(1, self.registers * threads)
        by_shared = SHARED_BYTES_PER_SM // self.shared_bytes if self.shared_bytes else 32
        return max(0, min(by_regs, by_shared, MAX_THREADS_PER_SM // threads))


def _infonce_module():
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("TRITON_INTERPRET=1 is set: ahead-of-time compilation needs the real Triton compiler; "
                           "run without it")
    return importlib.import_module("kernels.infonce")


def _variants(mod, dtype: torch.dtype, dim: int):
    """(kernel, constexprs, options) for every launch the loss makes at this dtype and width."""
    cfg = mod._launch_config(torch.device("cuda"), dim, dtype)
    tiles = {k: cfg[k] for k in ("BLOCK_N", "BLOCK_M", "BLOCK_D")}
    opts = {k: cfg[k] for k in ("num_warps", "num_stages")}
    prec = cfg["INPUT_PRECISION"]
    for excl in (False, True):
        yield mod._infonce_fwd_partial_kernel, dict(EXCLUDE_DIAG=excl, INPUT_PRECISION=prec, **tiles), opts
        yield mod._infonce_bwd_anchor_kernel, dict(EXCLUDE_DIAG=excl, INPUT_PRECISION=prec, **tiles), opts
        yield mod._infonce_bwd_keys_kernel, dict(EXCLUDE_DIAG=excl, INPUT_PRECISION=prec, **tiles), opts
    for pid in (False, True):
        yield (mod._infonce_combine_kernel,
               dict(POS_IN_DENOM=pid, BLOCK_N=cfg["BLOCK_N"], BLOCK_D=cfg["BLOCK_D"], BLOCK_P=16), opts)


def _signature(fn, dtype: torch.dtype, dim: int, constexprs: dict):
    """Argument types as the launcher would specialise them: 16-byte aligned pointers; strides and ``dim``
    divisible by 16 when ``dim`` is (contiguous rows), so loads vectorize as they do at run time."""
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _POINTERS:
            kind = _POINTERS[name]
            signature[name] = "*" + (_TRITON_TYPES[dtype] if kind == "in" else "fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name == "scale":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if (name == "dim" or name.startswith("stride")) and dim % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs


def _tool(name: str) -> str:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing; the triton wheel ships it on Linux x86-64")
    return path


def _resource_usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    fields = dict(re.findall(r"\b(REG|LOCAL|SHARED|STACK):(\d+)", out.split("Function", 1)[-1]))
    return {k: int(v) for k, v in fields.items()}


# operand kinds: name -> (dtype, torch float32 matmul precision in effect)
KINDS = {"float32": (torch.float32, "highest"), "float32-tf32": (torch.float32, "high"),
         "bfloat16": (torch.bfloat16, "highest"), "float16": (torch.float16, "highest")}


def compile_kernels(arch: int = 90, kinds=("float32", "float32-tf32", "bfloat16"), dims=(128,)) -> list[Resources]:
    """Compile every launch variant for ``sm_{arch}``; return their resource usage. ``kinds`` from KINDS: float32
    under torch's default "highest" matmul precision (3xTF32 dots) and under "high" (TF32 dots), bfloat16, float16."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    mod = _infonce_module()
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    results = []
    saved = torch.get_float32_matmul_precision()
    for kind in kinds:
        dtype, precision = KINDS[kind]
        for dim in dims:
            torch.set_float32_matmul_precision(precision)
            try:
                variants = list(_variants(mod, dtype, dim))
            finally:
                torch.set_float32_matmul_precision(saved)
            for fn, constexprs, opts in variants:
                signature, attrs = _signature(fn, dtype, dim, constexprs)
                src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
                compiled = triton.compile(src, target=target, options=backend.parse_options(opts).__dict__)
                usage = _resource_usage(compiled.asm["cubin"])
                flags = ",".join(f"{k}={v}" for k, v in constexprs.items() if not k.startswith("BLOCK"))
                results.append(Resources(
                    kernel=fn.__name__, dtype=kind, dim=dim, constexprs=flags,
                    registers=usage.get("REG", 0), spill_bytes=usage.get("LOCAL", 0) + usage.get("STACK", 0),
                    shared_bytes=max(compiled.metadata.shared, usage.get("SHARED", 0)),
                    num_warps=opts["num_warps"]))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability without the dot (default 90)")
    parser.add_argument("--dims", default="128", help="comma-separated embedding widths D (default 128)")
    parser.add_argument("--kinds", default="float32,float32-tf32,bfloat16",
                        help=f"comma-separated operand kinds from {', '.join(KINDS)} (default the first three)")
    parser.add_argument("--max-spill", type=int, default=256,
                        help="exit 1 when a 3xTF32 variant spills more bytes per thread than this (default 256); "
                             "TF32 and 16-bit variants must not spill at all")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        parser.error(f"--kinds {bad[0]!r} is invalid; allowed: {', '.join(KINDS)}")
    try:
        dims = [int(d) for d in args.dims.split(",")]
    except ValueError:
        parser.error(f"--dims {args.dims!r} is invalid; allowed: comma-separated positive integers")
    if any(d < 1 for d in dims):
        parser.error(f"--dims {args.dims!r} is invalid; allowed: comma-separated positive integers")
    rows = compile_kernels(args.arch, tuple(kinds), dims)
    import triton
    print(f"sm_{args.arch}, triton {triton.__version__} (compiled ahead of time; registers and spills as ptxas "
          "reports them)")
    print("kernel | kind | D | flags | registers | spill bytes | shared bytes | warps | programs/SM")
    for r in rows:
        print(f"{r.kernel} | {r.dtype} | {r.dim} | {r.constexprs} | {r.registers} | {r.spill_bytes} | "
              f"{r.shared_bytes} | {r.num_warps} | {r.programs_per_sm}")
    spilled = [r for r in rows if r.spill_bytes > (args.max_spill if "tf32x3" in r.constexprs else 0)]
    if spilled:
        print(f"{len(spilled)} variant(s) spill registers to local memory beyond the limits (3xTF32: "
              f"{args.max_spill} bytes per thread; others: none)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
