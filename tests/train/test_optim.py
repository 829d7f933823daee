"""LARS (foreach, no host sync) against a per-parameter restatement of the anchors' LARSWrapper; warmup-cosine."""
from __future__ import annotations

import math

import pytest
import torch

from fastpnr.config import OptimConfig
from fastpnr.train.optim import LARS, set_lr, warmup_cosine


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
    params.append(torch.randn(2, 4, dtype=torch.float64))   # zero gradient every step: LARS and decay skipped
    params.append(torch.zeros(3, 3, dtype=torch.float64))   # zero-norm parameter at step 1: LARS skipped
    grads_seq = [[torch.randn_like(p) for p in params] for _ in range(3)]
    for gs in grads_seq:
        gs[-2].zero_()
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
    assert torch.equal(ps[-2].detach(), params[-2])  # ||g|| = 0: no weight decay crept in, the parameter is unchanged


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


@pytest.mark.parametrize("clip, exclude", [(True, True), (False, False)])
def test_lars_with_tensor_lr_matches_restatement_and_float_lr(clip, exclude):
    """Per-group 0-d tensor lrs (what a captured CUDA graph reads), changed in place between steps."""
    torch.manual_seed(1)
    shapes = [(7, 5), (5,), (3, 3, 2, 2), (4,)]
    params = [torch.randn(s, dtype=torch.float64) for s in shapes]
    grads_seq = [[torch.randn_like(p) for p in params] for _ in range(3)]
    lrs_seq = [(0.3, 0.05), (0.2, 0.05), (0.1, 0.01)]   # group 0: params 0-1, group 1: params 2-3
    wd, mom, eta = 1e-4, 0.9, 0.02

    def make(tensor_lr):
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        lr0, lr1 = (torch.tensor(v, dtype=torch.float64) if tensor_lr else v for v in lrs_seq[0])
        opt = LARS([{"params": ps[:2], "lr": lr0}, {"params": ps[2:], "lr": lr1}], lr=0.3, momentum=mom,
                   weight_decay=wd, eta=eta, clip=clip, exclude_bias_n_norm=exclude)
        return ps, opt

    ps_t, opt_t = make(True)
    ps_f, opt_f = make(False)
    lr_tensors = [g["lr"] for g in opt_t.param_groups]
    ref_p, ref_b = [p.clone() for p in params], [None] * len(params)
    for gs, lrs in zip(grads_seq, lrs_seq):
        for g, lr in zip(opt_t.param_groups, lrs):
            g["lr"].fill_(lr)   # in place, as outside a captured graph
        for g, lr in zip(opt_f.param_groups, lrs):
            g["lr"] = lr
        for ps in (ps_t, ps_f):
            for p, g in zip(ps, gs):
                p.grad = g.clone()
        opt_t.step()
        opt_f.step()
        new_p, new_b = [], []
        for sl, lr in ((slice(0, 2), lrs[0]), (slice(2, 4), lrs[1])):
            p_, b_ = reference_lars_step(ref_p[sl], gs[sl], ref_b[sl], lr, wd, mom, eta, clip, exclude)
            new_p += p_
            new_b += b_
        ref_p, ref_b = new_p, new_b
    assert [g["lr"] for g in opt_t.param_groups] == lr_tensors   # the same tensor objects (graph addresses)
    for pt, pf, r in zip(ps_t, ps_f, ref_p):
        assert torch.allclose(pt.detach(), r, rtol=1e-10, atol=1e-12)
        assert torch.equal(pt.detach(), pf.detach())   # tensor lr and float lr: the same bits


def test_use_tensor_lr_and_set_lr_fill_in_place():
    cfg = OptimConfig(lr=0.4, warmup_epochs=0, epochs=4)
    p1, p2 = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2, 2))
    opt = LARS([{"params": [p1], "base_lr": 0.4}, {"params": [p2], "base_lr": 0.1, "static_lr": True}], lr=0.4)
    opt.use_tensor_lr("cpu")
    tensors = [g["lr"] for g in opt.param_groups]
    assert all(t.dtype == torch.float32 and t.ndim == 0 for t in tensors)
    opt.use_tensor_lr(torch.device("cpu"))   # already there: kept
    set_lr(opt, 1.7, 4, cfg)
    assert [g["lr"] for g in opt.param_groups] == tensors
    assert tensors[0].item() == pytest.approx(0.5 * 0.4 * (1 + math.cos(math.pi * 1 / 4)), rel=1e-6)
    assert tensors[1].item() == pytest.approx(0.1)


def test_batch_size_scales_the_base_and_distill_lr_but_not_classifier_lr():
    """The anchors scale ``lr`` by batch/256 (cassle/args/utils.py) and leave ``classifier_lr`` as given."""
    from fastpnr.config import ModelConfig
    from fastpnr.methods import build_method
    from fastpnr.methods import BYOLConfig
    from fastpnr.train.optim import build_optimizer
    from fastpnr.regularizers import build_regularizer
    from fastpnr.regularizers import PNRConfig

    cfg = OptimConfig(lr=0.4, classifier_lr=0.3, batch_size=512)
    method = build_method(BYOLConfig(name="byol", proj_hidden=16, proj_out=8, pred_hidden=8), ModelConfig(), 10)
    reg = build_regularizer(PNRConfig(distill_hidden=8), method)
    opt = build_optimizer(method.param_groups(cfg) + reg.param_groups(cfg), cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["ssl"] == pytest.approx(0.4 * 512 / 256) and lrs["distill_predictor"] == pytest.approx(0.4 * 512 / 256)
    assert lrs["classifier"] == 0.3
    # BYOL-style distillers: lr / distill_lamb when distill_lamb < 1 (the anchors' distiller learnable_params)
    half = build_regularizer(PNRConfig(distill_hidden=8, pos_weight=0.5), method).param_groups(cfg)
    assert half[0]["lr"] == pytest.approx(0.4 * 512 / 256 / 0.5)
