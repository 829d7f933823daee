"""MoCo v3's loss and its PNR form through the fused Triton InfoNCE kernel (interpreter on CPU) agree with torch."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from fastpnr.losses import mocov3_loss, pnr_mocov3_loss  # noqa: E402


def _value_and_grads(fn, backend, inputs):
    loss = fn(backend)
    return [loss.detach(), *torch.autograd.grad(loss, inputs)]


@pytest.mark.parametrize("b,d", [(7, 10), (16, 8)])
def test_mocov3_and_pnr_mocov3_through_the_kernel(b, d):
    torch.manual_seed(b)
    q1, q2, p1, p2 = (torch.randn(b, d, requires_grad=True) for _ in range(4))
    k1, k2, f1, f2 = (torch.randn(b, d) for _ in range(4))
    cases = [(lambda be: mocov3_loss(q1, q2, k1, k2, temperature=0.2, backend=be), [q1, q2]),
             (lambda be: pnr_mocov3_loss(q1, q2, k1, k2, p1, p2, f1, f2, temperature=0.2, distill_temperature=0.1,
                                         backend=be), [q1, q2, p1, p2])]
    for fn, inputs in cases:
        ref, fused = _value_and_grads(fn, "torch", inputs), _value_and_grads(fn, "triton", inputs)
        for a, b_ in zip(ref, fused):  # float32 kernel vs float32 reference: the kernel tests' tolerances
            assert torch.allclose(a, b_, rtol=1e-4, atol=1e-5)


def test_the_method_uses_the_kernel_when_asked():
    """method.loss_backend reaches the kernel: the MoCo v3 method's loss with backend triton equals torch's."""
    from fastpnr.config import build_config
    from fastpnr.methods import build_method

    losses = {}
    for backend in ("torch", "triton"):
        cfg = build_config("smoke", {"method": "mocov3", "method.proj_hidden": 16, "method.pred_hidden": 16,
                                     "method.proj_out": 8, "model.backbone": "vit_tiny", "model.patch_size": 8,
                                     "model.depth": 1, "method.loss_backend": backend, "data.image_size": 32})
        torch.manual_seed(0)
        m = build_method(cfg.method, cfg.model, num_classes=10)
        views = [torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
        losses[backend] = m.ssl_loss(m.forward_views(views))[0].item()
    assert losses["triton"] == pytest.approx(losses["torch"], rel=1e-5)
