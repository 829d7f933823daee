"""AdamW against torch.optim.AdamW in float64, its weight-decay exclusion, a tensor lr, and the config's choice."""
from __future__ import annotations

import pytest
import torch

from fastpnr.config import build_config
from fastpnr.errors import ConfigError
from fastpnr.train.adamw import AdamW
from fastpnr.train.optim import build_optimizer, set_lr


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_(True),
            torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(True)]


def _run(opt, params, steps=6, lrs=(0.125, 0.0625, 0.03125, 0.25, 0.125, 0.015625)):
    """``steps`` steps of random gradients; lrs exact in float32 (a tensor lr is float32)."""
    g = torch.Generator().manual_seed(7)
    for t in range(steps):
        for group in opt.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lrs[t])
            else:
                group["lr"] = lrs[t]
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("tensor_lr", [False, True])
def test_matches_torch_adamw_in_float64(tensor_lr):
    ours, ref = _params(), _params()
    opt = AdamW(ours, lr=0.1, betas=(0.9, 0.95), weight_decay=0.05, exclude_bias_n_norm=False)
    if tensor_lr:
        opt.use_tensor_lr("cpu")
    got = _run(opt, ours)
    want = _run(torch.optim.AdamW(ref, lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05), ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_excluded_one_d_parameters_get_no_weight_decay():
    ours, ref_decayed, ref_plain = _params(), _params(), _params()
    got = _run(AdamW(ours, lr=0.1, weight_decay=0.05, exclude_bias_n_norm=True), ours)
    matrix = _run(torch.optim.AdamW(ref_decayed, lr=0.1, weight_decay=0.05), ref_decayed)[0]
    bias = _run(torch.optim.AdamW(ref_plain, lr=0.1, weight_decay=0.0), ref_plain)[1]
    torch.testing.assert_close(got[0], matrix, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], bias, rtol=1e-12, atol=1e-12)


def test_config_builds_adamw_and_its_schedule_sets_the_lr():
    cfg = build_config("smoke", {"optim.optimizer": "adamw", "optim.lr": 1e-3, "optim.betas": "(0.9, 0.95)"})
    p = torch.nn.Parameter(torch.ones(3, 3))
    opt = build_optimizer([{"name": "ssl", "params": [p]}], cfg.optim)
    assert isinstance(opt, AdamW) and opt.param_groups[0]["betas"] == (0.9, 0.95)
    set_lr(opt, 0, 10, cfg.optim)
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.optim.effective_lr(1e-3))
    with pytest.raises(ConfigError, match=r"optim.betas=\(0.9, 1.0\) is invalid; allowed: two numbers in \[0, 1\)"):
        build_config("smoke", {"optim.betas": "(0.9, 1.0)"})
