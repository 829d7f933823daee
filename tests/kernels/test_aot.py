"""The InfoNCE kernels compile for the H100 (sm_90) without register spills, on this CPU machine.

``python -m kernels.aot`` runs Triton's real compiler and the ptxas it ships; it cannot run in this process because
tests/kernels/conftest.py switched Triton to its interpreter, so it runs in a subprocess without TRITON_INTERPRET.
"""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _has_ptxas() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


@pytest.mark.skipif(not _has_ptxas(), reason="triton's ptxas is not shipped on this platform")
def test_every_launch_variant_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "kernels.aot", "--arch", "90", "--dims", "128",
                          "--kinds", "float32,float32-tf32,bfloat16"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line.startswith("_infonce_")]
    # 3 kernels x 2 masks + combine x 2, for each of the 3 operand kinds
    assert len(rows) == 24
    for kernel, kind, dim, flags, regs, spill, shared, warps, per_sm in rows:
        # TF32 and bf16 dots: no spill at all; 3xTF32 triples the operand registers: 16-152 bytes seen (triton
        # 3.7.1 and 3.9.0 allocate differently)
        assert int(spill) <= (256 if "tf32x3" in flags else 0), (kernel, kind, flags, spill)
        assert int(shared) <= 227 * 1024 and int(per_sm) >= 1, (kernel, kind, shared, per_sm)
        assert 0 < int(regs) <= 255
    assert {r[1] for r in rows} == {"float32", "float32-tf32", "bfloat16"}
    assert any("INPUT_PRECISION=tf32x3" in r[3] for r in rows if r[1] == "float32")


def test_aot_refuses_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    aot = importlib.import_module("kernels.aot")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        aot.compile_kernels(90, ("bfloat16",), (128,))


@pytest.mark.parametrize("precision,want", [("highest", "tf32x3"), ("high", "tf32"), ("medium", "tf32")])
def test_float32_dots_follow_torch_matmul_precision(precision, want):
    mod = importlib.import_module("kernels.infonce")
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        cfg = mod._launch_config(torch.device("cuda"), 128, torch.float32)  # no CUDA call: only reads the table
    finally:
        torch.set_float32_matmul_precision(saved)
    assert cfg["INPUT_PRECISION"] == want
    assert (cfg["BLOCK_N"], cfg["BLOCK_M"]) == mod._GPU_TILES[(want, 128)][:2]
