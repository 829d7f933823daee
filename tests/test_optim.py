"""LARS (foreach, no host sync) against a per-parameter restatement of the anchors' LARSWrapper; warmup-cosine."""
from __future__ import annotations

import math

import pytest
import torch

from fastpnr.config import OptimConfig
from fastpnr.optim import LARS, set_lr, warmup_cosine


def reference_lars_step(params, grads, bufs, lr, wd, momentum, eta, clip, exclude, eps=1e-8):
    """Straight restatement of cassle/utils/lars.py + torch.optim.SGD (weight decay zeroed during the step)."""
    out_p, out_b = [], []
    for p, g, b in zip(params, grads, bufs):
        p, g = p.clone(), g.clone()
        if not (exclude and p.ndim == 1):
            p_norm, g_norm = torch.norm(p), torch.norm(g)
            if p_norm != 0 and g_norm != 0:
                new_lr = eta * p_norm / (g_norm + p_norm * wd + eps)
                if clip:
                    new_lr = min(new_lr / lr, 1)
                g = (g + wd * p) * new_lr
        b = momentum * b + g if b is not None else g.clone()
        out_p.append(p - lr * b)
        out_b.append(b)
    return out_p, out_b


@pytest.mark.parametrize("clip, exclude", [(True, True), (False, True), (True, False)])
def test_lars_matches_per_parameter_restatement(clip, exclude):
    torch.manual_seed(0)
    shapes = [(7, 5), (5,), (3, 3, 2, 2), (4,), (6, 1)]
    params = [torch.randn(s, dtype=torch.float64) for s in shapes]
    params.append(torch.zeros(3, 3, dtype=torch.float64))   # zero-norm parameter: LARS skipped
    grads_seq = [[torch.randn_like(p) for p in params] for _ in range(3)]
    for gs in grads_seq:
        gs[-1].zero_() if False else None
    lr, wd, mom, eta = 0.3, 1e-4, 0.9, 0.02
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = LARS(ps, lr=lr, momentum=mom, weight_decay=wd, eta=eta, clip=clip, exclude_bias_n_norm=exclude)
    ref_p, ref_b = [p.clone() for p in params], [None] * len(params)
    for gs in grads_seq:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
        ref_p, ref_b = reference_lars_step(ref_p, gs, ref_b, lr, wd, mom, eta, clip, exclude)
    for p, r in zip(ps, ref_p):
        assert torch.allclose(p.detach(), r, rtol=1e-10, atol=1e-12)


def test_warmup_cosine_matches_pl_bolts_formula():
    base, start, warm, total = 0.6, 0.003, 10, 500
    assert warmup_cosine(0, total, base, warm, start, 0.0) == pytest.approx(start)
    assert warmup_cosine(5, total, base, warm, start, 0.0) == pytest.approx(start + 5 * (base - start) / 9)
    assert warmup_cosine(9, total, base, warm, start, 0.0) == pytest.approx(base)
    assert warmup_cosine(10, total, base, warm, start, 0.0) == pytest.approx(base)
    mid = 10 + (total - 10) / 2
    assert warmup_cosine(mid, total, base, warm, start, 0.0) == pytest.approx(base / 2)
    assert warmup_cosine(total, total, base, warm, start, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_per_epoch_schedule_and_static_groups():
    cfg = OptimConfig(lr=0.4, warmup_epochs=0, epochs=4)
    p1, p2 = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([{"params": [p1], "base_lr": 0.4}, {"params": [p2], "base_lr": 0.1, "static_lr": True}], lr=0.4)
    set_lr(opt, 1.7, 4, cfg)  # per epoch: floor(1.7) = 1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.4 * (1 + math.cos(math.pi * 1 / 4)))
    assert opt.param_groups[1]["lr"] == 0.1
