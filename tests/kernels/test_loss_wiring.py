"""The PNR / SimCLR / MoCo losses run through the fused Triton kernel (interpreter on CPU) and agree with torch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from fastpnr.losses import moco_loss, pnr_moco_loss, pnr_simclr_loss, simclr_loss  # noqa: E402


def _grads(fn, tensors):
    loss = fn()
    return [loss.detach(), *torch.autograd.grad(loss, tensors)]


def test_pnr_simclr_and_simclr_through_the_kernel():
    torch.manual_seed(0)
    b, d = 9, 12
    z1, z2, p1, p2 = (torch.randn(b, d, requires_grad=True) for _ in range(4))
    f1, f2 = torch.randn(b, d), torch.randn(b, d)
    for fn, args in [(pnr_simclr_loss, (z1, z2, p1, p2, f1, f2)), (simclr_loss, (z1, z2))]:
        grads = {be: _grads(lambda: fn(*args, temperature=0.2, backend=be), [z1, z2] + ([p1, p2] if fn is pnr_simclr_loss else []))
                 for be in ("torch", "triton")}
        for a, b_ in zip(grads["torch"], grads["triton"]):
            assert torch.allclose(a, b_, rtol=1e-4, atol=1e-5)


def test_pnr_moco_and_moco_through_the_kernel():
    torch.manual_seed(1)
    b, d, k = 7, 10, 33
    q, p = (F.normalize(torch.randn(b, d), dim=1).requires_grad_() for _ in range(2))
    kk, f = F.normalize(torch.randn(b, d), dim=1), F.normalize(torch.randn(b, d), dim=1)
    queue, fq = F.normalize(torch.randn(k, d), dim=1), F.normalize(torch.randn(k, d), dim=1)
    cases = [(lambda be: pnr_moco_loss(q, kk, p, f, queue, fq, temperature=0.2, distill_temperature=0.1, backend=be), [q, p]),
             (lambda be: moco_loss(q, kk, queue, temperature=0.2, backend=be), [q])]
    for fn, inputs in cases:
        ref, fused = _grads(lambda: fn("torch"), inputs), _grads(lambda: fn("triton"), inputs)
        for a, b_ in zip(ref, fused):
            assert torch.allclose(a, b_, rtol=1e-4, atol=1e-5)
