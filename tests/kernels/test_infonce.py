"""kernels.infonce: Triton forward and every gradient against a float64 reference; the reference against a loop.

On CPU the Triton kernels run in Triton's interpreter (tests/kernels/conftest.py sets TRITON_INTERPRET=1), in float32
only: the interpreter's bf16 arithmetic is wrong (triton-lang/triton#11584). bf16 and CUDA-graph tests need CUDA.
Sizes are small and odd (N=37, M=53, D=29: not multiples of the 16-wide CPU tiles) to keep the interpreter fast.
"""
import importlib
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import infonce, reference_infonce
from kernels.infonce import ConfigError

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (atol, rtol) against the float64 reference; fp32 measured ~1e-7 on CPU, GPU tiles sum in another order
TOL = {torch.float32: (2e-5, 1e-4), torch.bfloat16: (3e-2, 3e-2)}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _unit(*shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=1) * scale)


def _check_against_reference(anchors, positives, keys, tau, exclude, pid, dtype=torch.float32, grad_out=2.0,
                             tol=None):
    """Run the Triton path on ``dtype`` copies and the reference in float64; compare loss and all gradients."""
    atol, rtol = tol or TOL[dtype]
    leaves = [anchors, positives, *keys]
    ours = [x.to(DEVICE, dtype).requires_grad_() for x in leaves]
    ref = [x.to(DEVICE, dtype).double().requires_grad_() for x in leaves]  # same rounded inputs
    loss = infonce(ours[0], ours[1], ours[2:], tau, exclude, pid, backend="triton")
    loss.backward(torch.tensor(grad_out, device=DEVICE))
    want = reference_infonce(ref[0], ref[1], ref[2:], tau, exclude, pid)
    (grad_out * want).backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), want.detach(), atol=atol, rtol=rtol)
    for name, x, r in zip(["anchors", "positives"] + [f"keys[{b}]" for b in range(len(keys))], ours, ref):
        assert x.grad.dtype == dtype, name
        torch.testing.assert_close(x.grad.double(), r.grad, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def _loop_infonce(a, p, keys, tau, exclude, pid):
    """The equation restated row by row in plain Python floats, independent of the reference's tensor code."""
    total = 0.0
    for i in range(len(a)):
        pos = sum(x * y for x, y in zip(a[i], p[i])) / tau
        terms = [math.exp(pos)] if pid else []
        for b, kb in enumerate(keys):
            for k in range(len(kb)):
                if exclude[b] and k == i:
                    continue
                terms.append(math.exp(sum(x * y for x, y in zip(a[i], kb[k])) / tau))
        total += -pos + math.log(sum(terms))
    return total / len(a)


@pytest.mark.parametrize("pid", [True, False])
@pytest.mark.parametrize("exclude", [(False,), (True, False), (False, True, True)])
def test_torch_backend_matches_python_loop(exclude, pid):
    n, d = 6, 4
    a, p = _unit(n, d, seed=1).tolist(), _unit(n, d, seed=2).tolist()
    keys = [_unit(n if e else 5 + b, d, seed=10 + b).tolist() for b, e in enumerate(exclude)]
    got = infonce(torch.tensor(a), torch.tensor(p), [torch.tensor(k) for k in keys], 0.3, exclude, pid,
                  backend="torch")
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_loop_infonce(a, p, keys, 0.3, exclude, pid), rel=1e-5)


# (key block sizes, exclude_diagonal, positive_in_denominator, tau); N=37, D=29; exclusion needs M_b == N
CASES = [
    ((53,), None, True, 0.2),
    ((37,), (True,), False, 0.05),
    ((37, 53), (True, False), True, 1.0),
    ((53, 37), (False, True), False, 0.1),
    ((37, 53, 20), (True, False, False), True, 0.07),
    ((20, 37, 37), (False, True, True), False, 0.5),
]


@pytest.mark.parametrize("sizes,exclude,pid,tau", CASES)
def test_triton_matches_float64_reference(sizes, exclude, pid, tau):
    n, d = 37, 29
    keys = [_unit(m, d, seed=20 + b) for b, m in enumerate(sizes)]
    _check_against_reference(_unit(n, d, seed=3), _unit(n, d, seed=4), keys, tau, exclude, pid)


def test_grad_output_one_and_wide_dim():
    """D=200 pads to BLOCK_D=256; grad_output 1."""
    n, d = 19, 200
    keys = [_unit(n, d, seed=5), _unit(23, d, seed=6)]
    _check_against_reference(_unit(n, d, seed=7), _unit(n, d, seed=8), keys, 0.1, (True, False), True,
                             grad_out=1.0)


@pytest.mark.parametrize("scale,tau", [(1.0, 0.05), (10.0, 0.1)])
def test_large_logits_do_not_overflow(scale, tau):
    """|a.k|/t up to 20 (unit rows, tau 0.05) and up to ~1e3 (rows of norm 10): exp would overflow float32."""
    n, d = 21, 17
    a = _unit(n, d, seed=9, scale=scale)
    keys = [a.clone(), _unit(30, d, seed=10, scale=scale)]  # a copy of the anchors: logits |a|^2/t on the diagonal
    p = a.roll(1, 0)
    atol = 1e-5 * scale ** 2 / tau  # the loss is a difference of two ~|logit| terms: absolute error scales with it
    _check_against_reference(a, p, keys, tau, (False, False), True, tol=(atol, 1e-4))
    _check_against_reference(a, p, keys, tau, (True, False), False, tol=(atol, 1e-4))


def test_shared_tensor_gradients_sum():
    """SimCLR-PNR: Z as anchors, Z rolled as positives, Z as an excluded key block; autograd sums the roles."""
    n, d, tau = 37, 29, 0.2
    z64 = _unit(n, d, seed=11)
    other64 = _unit(n, d, seed=12)
    z, other = z64.float().to(DEVICE).requires_grad_(), other64.float().to(DEVICE).requires_grad_()
    loss = infonce(z, z.roll(1, 0), [z, other], tau, (True, False), True, backend="triton")
    (2.0 * loss).backward()
    zr, otherr = z64.to(DEVICE).requires_grad_(), other64.to(DEVICE).requires_grad_()
    want = reference_infonce(zr, zr.roll(1, 0), [zr, otherr], tau, (True, False), True)
    (2.0 * want).backward()
    atol, rtol = TOL[torch.float32]
    torch.testing.assert_close(loss.double(), want.detach(), atol=atol, rtol=rtol)
    torch.testing.assert_close(z.grad.double(), zr.grad, atol=atol, rtol=rtol)
    torch.testing.assert_close(other.grad.double(), otherr.grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("target", [1, 1000])
def test_key_split_extremes_match_reference(monkeypatch, target):
    """One slice per block (target 1) and one slice per key tile (target 1000, a 5-key last slice): same results."""
    mod = importlib.import_module("kernels.infonce")
    monkeypatch.setattr(mod, "CPU_TARGET_PROGRAMS", target)
    if DEVICE == "cuda":
        monkeypatch.setattr(mod, "_target_programs", lambda device: target)
    n, d = 37, 29
    keys = [_unit(n, d, seed=40), _unit(53, d, seed=41)]
    _check_against_reference(_unit(n, d, seed=42), _unit(n, d, seed=43), keys, 0.1, (True, False), True)


@pytest.mark.parametrize("n,m,target", [(256, 65_536, 264), (8_192, 8_192, 264), (512, 512, 264), (37, 53, 8),
                                        (5, 1, 8), (64, 64 * 1000 + 1, 2)])
def test_key_split_plan_covers_every_key_once(n, m, target):
    mod = importlib.import_module("kernels.infonce")
    cfg = dict(BLOCK_N=64, BLOCK_M=64)
    splits, per_split = mod._key_splits(n, m, cfg, target)
    row_tiles = -(-n // 64)
    assert per_split % 64 == 0 and 1 <= splits <= mod.MAX_SPLITS
    assert (splits - 1) * per_split < m <= splits * per_split  # slices tile [0, m): none empty, none missing
    if row_tiles * mod.MAX_SPLITS >= target and -(-m // 64) >= target:
        assert row_tiles * splits >= target  # enough programs to fill the GPU when there are enough key tiles


def test_moco_pnr_plan_fills_an_h100():
    """N=256 anchors against 65,536 queue keys: 4 row tiles x 64 slices of 1,024 keys = 256 programs (132 SMs x 2)."""
    mod = importlib.import_module("kernels.infonce")
    assert mod._key_splits(256, 65_536, dict(BLOCK_N=64, BLOCK_M=64), 264) == (64, 1024)


def test_inputs_without_grad_cost_no_gradient_kernels(monkeypatch):
    mod = importlib.import_module("kernels.infonce")  # the module; kernels.infonce is the function

    launched = []
    real = mod._kernel
    monkeypatch.setattr(mod, "_kernel", lambda fn, device: launched.append(fn.fn.__name__) or real(fn, device))
    n, d = 20, 16
    a = _unit(n, d, seed=13).float().to(DEVICE).requires_grad_()
    p, k0, k1 = (_unit(m, d, seed=14 + m).float().to(DEVICE) for m in (n, 17, 18))
    k1.requires_grad_()
    infonce(a, p, [k0, k1], 0.2, backend="triton").backward()
    assert p.grad is None and k0.grad is None and a.grad is not None and k1.grad is not None
    assert launched.count("_infonce_bwd_keys_kernel") == 1  # the launcher is fetched once, launched per key block
    # only the keys' gradient wanted: no anchor-gradient kernel at all
    launched.clear()
    a.grad = k1.grad = None
    infonce(a.detach(), p, [k0, k1], 0.2, backend="triton").backward()
    assert "_infonce_bwd_anchor_kernel" not in launched and k1.grad is not None


def test_auto_backend_uses_reference_on_cpu():
    a, p, k = (_unit(8, 5, seed=s).float() for s in (15, 16, 17))
    got = infonce(a, p, [k], 0.3)  # "auto" on CPU tensors is the reference, bit for bit
    assert torch.equal(got, reference_infonce(a, p, [k], 0.3))


@pytest.mark.parametrize("kwargs,match", [
    (dict(exclude_diagonal=(True,), keys_rows=9), r"exclude_diagonal\[0\]=True"),
    (dict(exclude_diagonal=(True, False)), "one bool per key block"),
    (dict(backend="cuda"), "backend='cuda' is invalid"),
    (dict(temperature=0.0), "temperature=0.0 is invalid"),
])
def test_bad_arguments_raise_one_line_config_errors(kwargs, match):
    keys_rows = kwargs.pop("keys_rows", 8)
    a, p = _unit(8, 5, seed=18).float(), _unit(8, 5, seed=19).float()
    kwargs.setdefault("temperature", 0.2)
    with pytest.raises(ConfigError, match=match) as info:
        infonce(a, p, [_unit(keys_rows, 5, seed=20).float()], **kwargs)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_import_without_triton():
    """Importing kernels must work without triton; backend="triton" then says how to install it."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, kernels\n"
        "a = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)\n"
        "assert kernels.infonce(a, a, [a], 0.5).isfinite()\n"
        "try:\n"
        "    kernels.infonce(a, a, [a], 0.5, backend='triton')\n"
        "except ImportError as e:\n"
        "    assert 'pip install triton' in str(e) and '\\n' not in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    root = Path(kernels.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@needs_cuda
def test_bfloat16_on_cuda():
    n, d = 37, 29
    keys = [_unit(n, d, seed=21), _unit(53, d, seed=22)]
    _check_against_reference(_unit(n, d, seed=23), _unit(n, d, seed=24), keys, 0.1, (True, False), True,
                             dtype=torch.bfloat16)


@needs_cuda
def test_tf32_on_cuda():
    """float32 inputs under torch.set_float32_matmul_precision("high"): single-TF32 dots (10-bit mantissa)."""
    n, d = 37, 29
    keys = [_unit(n, d, seed=27), _unit(53, d, seed=28)]
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        _check_against_reference(_unit(n, d, seed=29), _unit(n, d, seed=30), keys, 0.1, (True, False), True,
                                 tol=(1e-2, 1e-2))
    finally:
        torch.set_float32_matmul_precision(before)


@needs_cuda
def test_cuda_graph_capture():
    """No host sync in forward or backward: the whole step captures and replays in a CUDA graph."""
    n, d = 64, 32
    a = _unit(n, d, seed=25).float().cuda().requires_grad_()
    k = _unit(80, d, seed=26).float().cuda().requires_grad_()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph compiles the kernels
        for _ in range(2):
            a.grad = k.grad = None
            infonce(a, a.roll(1, 0), [a, k], 0.2, (True, False), backend="triton").backward()
    torch.cuda.current_stream().wait_stream(side)
    a.grad = k.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = infonce(a, a.roll(1, 0), [a, k], 0.2, (True, False), backend="triton")
        loss.backward()
    graph.replay()
    torch.cuda.synchronize()
    want = reference_infonce(a.detach().double(), a.detach().double().roll(1, 0), [a.detach().double(),
                             k.detach().double()], 0.2, (True, False))
    torch.testing.assert_close(loss.double(), want, atol=1e-4, rtol=1e-4)
    assert a.grad.isfinite().all() and k.grad.isfinite().all()


def test_bench_script_quick_cpu_runs(capsys):
    """scripts/bench_kernels.py --device=cpu --quick: correctness pass, header and one row (torch.compile skipped:
    a cold inductor cache costs ~20 s here)."""
    if DEVICE == "cuda":
        pytest.skip("the CPU smoke run of the benchmark needs the interpreter, which is off when CUDA is present")
    path = Path(kernels.__file__).resolve().parents[1] / "scripts" / "bench_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_kernels", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(device="cpu", quick=True, iters=1, compile=False)
    out = capsys.readouterr().out
    assert "torch.float32: ok" in out and "case | ref eager ms" in out
    row = out.strip().splitlines()[-1]
    assert row.startswith("tiny N=40") and row.count("|") == 6 and "failed" not in row
