"""Benchmark ``kernels.infonce``: the Triton kernel against the PyTorch reference, eager and under torch.compile.

Loss:  mean_i [ -a_i.p_i/t + log( exp(a_i.p_i/t) + sum_b sum_k exp(a_i.K_b,k/t) ) ]  (t = 0.2, two key blocks:
block 0 requires grad like a current-batch view, block 1 does not, like a queue or the frozen model's outputs).

Each step is forward + backward on the same inputs for all three providers, timed after warm-up: CUDA events
(median of ``iters``) on GPU, ``time.perf_counter`` on CPU, where the Triton kernels run in Triton's interpreter
(TRITON_INTERPRET=1, set here before triton is imported), so CPU times say nothing about GPU speed.
Peak MB is ``torch.cuda.max_memory_allocated`` during one step, minus what was allocated before it (the inputs).
A correctness pass (float32 and bfloat16 against a float64 reference) runs first and stops the script on failure.

    python scripts/bench_kernels.py                                  # CUDA, float32, all cases
    python scripts/bench_kernels.py --dtype=bfloat16 --sizes=wide,large
    python scripts/bench_kernels.py --device=cpu --quick             # seconds; a smoke test of the script
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import fire
import torch
import torch.nn.functional as F

# (name, N, D, key block sizes): the issue's three shapes, and a tiny one for --quick
CASES = {
    "small": (512, 128, (512, 512)),
    "wide": (256, 128, (65_536, 65_536)),
    "large": (8_192, 128, (8_192, 8_192)),
}
QUICK_CASES = {"tiny": (40, 32, (48, 33))}
TEMPERATURE = 0.2
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# (atol, rtol) of the correctness pass against float64; bf16 rounds inputs to 8 bits of mantissa
# (TF32 dots, under --matmul_precision=high, keep 10 bits of mantissa)
CHECK_TOL = {torch.float32: (1e-4, 1e-4), "tf32": (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}


def _import_kernels(device: str):
    """Import ``kernels`` after choosing the Triton mode: the interpreter must be on before triton is imported."""
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # run as a file, scripts/ is on sys.path, not the repository root
        sys.path.insert(0, root)
    import kernels
    return kernels


def _inputs(n, d, key_sizes, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    unit = lambda m: F.normalize(torch.randn(m, d, generator=g), dim=1).to(device, dtype)  # noqa: E731
    anchors, positives = unit(n).requires_grad_(), unit(n).requires_grad_()
    keys = [unit(key_sizes[0]).requires_grad_(), unit(key_sizes[1])]
    return anchors, positives, keys


def _step(loss_fn, anchors, positives, keys):
    """One training-like step: forward, backward, gradients dropped so every step allocates them afresh."""
    for t in (anchors, positives, *keys):
        t.grad = None
    loss = loss_fn(anchors, positives, keys, TEMPERATURE)
    loss.backward()
    return loss


def _time_ms(fn, iters: int, device: str) -> float:
    """Median milliseconds per call after warm-up (which also triggers compilation)."""
    for _ in range(2 if device == "cpu" else 5):
        fn()
    times = []
    for _ in range(iters):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _peak_mb(fn, device: str):
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _check(kernels, device: str, dtype: torch.dtype) -> str:
    """Triton loss and gradients vs the float64 reference on odd sizes, with and without diagonal exclusion."""
    n, d = 37, 29
    a, p, keys = _inputs(n, d, (n, 53), dtype, device, seed=1)
    worst = 0.0
    for exclude, pid in (((False, False), True), ((True, False), False)):
        loss = kernels.infonce(a, p, keys, TEMPERATURE, exclude, pid, backend="triton")
        got = [loss, *torch.autograd.grad(loss, [a, p, keys[0]])]
        ref_in = [t.detach().double().requires_grad_(t.requires_grad) for t in (a, p, *keys)]
        ref = kernels.reference_infonce(ref_in[0], ref_in[1], ref_in[2:], TEMPERATURE, exclude, pid)
        want = [ref, *torch.autograd.grad(ref, ref_in[:3])]
        tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
        atol, rtol = CHECK_TOL["tf32" if tf32 else dtype]
        for name, x, y in zip(("loss", "d_anchors", "d_positives", "d_keys0"), got, want):
            err = (x.double() - y).abs()
            worst = max(worst, err.max().item())
            if not torch.allclose(x.double(), y, atol=atol, rtol=rtol):
                raise AssertionError(f"{dtype} {name} exclude={exclude}: max abs error {err.max().item():.3g} "
                                     f"exceeds atol={atol}, rtol={rtol}")
    return f"ok (max abs error {worst:.2g})"


def _fmt(x, spec=".3f"):
    return "-" if x is None else (x if isinstance(x, str) else format(x, spec))


def main(device="cuda", sizes="all", dtype="float32", iters=50, quick=False, compile=True,
         matmul_precision="highest"):
    """Time forward+backward of the Triton kernel, the reference in eager and under torch.compile.

    device: cuda or cpu. sizes: "all" or case names (small, wide, large; tiny with --quick), comma-separated.
    dtype: float32 or bfloat16. iters: timed steps per provider. quick: tiny sizes and 3 iterations.
    compile: also time the reference under torch.compile (on CPU a cold inductor cache adds ~20 s of C++ builds).
    matmul_precision: torch.set_float32_matmul_precision for every provider: "highest" (exact fp32 matmuls in the
    reference, 3xTF32 dots in the kernel) or "high" (TF32 in both); bfloat16 inputs ignore it.
    """
    if device not in ("cuda", "cpu"):
        raise SystemExit(f"device={device!r} is invalid; allowed: cuda, cpu")
    if dtype not in DTYPES:
        raise SystemExit(f"dtype={dtype!r} is invalid; allowed: {', '.join(DTYPES)}")
    if matmul_precision not in ("highest", "high"):
        raise SystemExit(f"matmul_precision={matmul_precision!r} is invalid; allowed: highest, high")
    torch.set_float32_matmul_precision(matmul_precision)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device='cuda' is invalid here: no CUDA device; use --device cpu")
    kernels = _import_kernels(device)
    table = QUICK_CASES if quick else CASES
    names = list(table) if sizes == "all" else (sizes.split(",") if isinstance(sizes, str) else list(sizes))
    unknown = [s for s in names if s not in table]
    if unknown:
        raise SystemExit(f"sizes={unknown!r} is invalid; allowed: all, {', '.join(table)}")
    iters = min(iters, 3) if quick else iters
    torch_dtype = DTYPES[dtype]

    print("correctness vs float64 reference:")
    for check_dtype in (torch.float32, torch.bfloat16):
        if device == "cpu" and check_dtype == torch.bfloat16:
            print("  torch.bfloat16: skipped on cpu (the Triton interpreter's bf16 arithmetic is wrong, "
                  "triton-lang/triton#11584)")
            continue
        print(f"  {check_dtype}: {_check(kernels, device, check_dtype)}")

    dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter: not GPU timings)"
    command = (f"python scripts/bench_kernels.py --device={device} --sizes={','.join(names)} --dtype={dtype} "
               f"--iters={iters} --matmul_precision={matmul_precision}" + (" --quick" if quick else "")
               + ("" if compile else " --compile=False"))
    import triton
    print(f"\ndevice: {dev_name} | dtype: {dtype} | torch {torch.__version__} | triton {triton.__version__} "
          f"| t={TEMPERATURE} | timed steps: {iters} | float32 matmul precision: {matmul_precision}")
    print(f"command: {command}")
    print("case | ref eager ms | ref compile ms | triton ms | ratio vs eager | ratio vs compile "
          "| peak MB eager / compile / triton")

    eager = kernels.reference_infonce
    compiled = torch.compile(kernels.reference_infonce, dynamic=False) if compile else None
    triton_fn = lambda a, p, k, t: kernels.infonce(a, p, k, t, backend="triton")  # noqa: E731
    for name in names:
        n, d, key_sizes = table[name]
        a, p, keys = _inputs(n, d, key_sizes, torch_dtype, device)
        ms, peak = {}, {}
        for label, fn in (("eager", eager), ("compile", compiled), ("triton", triton_fn)):
            if fn is None:
                ms[label], peak[label] = "skipped", None
                continue
            step = lambda: _step(fn, a, p, keys)  # noqa: E731
            try:
                ms[label] = _time_ms(step, iters, device)
                peak[label] = _peak_mb(step, device)
            except Exception as e:  # an OOM or a compiler failure is a result for that cell, not the end of the run
                ms[label], peak[label] = f"failed: {type(e).__name__}", None
                if device == "cuda":
                    torch.cuda.empty_cache()
        ratio = {ref: (ms[ref] / ms["triton"] if all(isinstance(ms[x], float) for x in (ref, "triton")) else None)
                 for ref in ("eager", "compile")}
        label = f"{name} N={n} D={d} K={'+'.join(map(str, key_sizes))}"
        print(f"{label} | {_fmt(ms['eager'])} | {_fmt(ms['compile'])} | {_fmt(ms['triton'])} | "
              f"{_fmt(ratio['eager'], '.2f')} | {_fmt(ratio['compile'], '.2f')} | "
              f"{_fmt(peak['eager'], '.1f')} / {_fmt(peak['compile'], '.1f')} / {_fmt(peak['triton'], '.1f')}")


if __name__ == "__main__":
    fire.Fire(main)
