"""Barlow Twins' cross-correlation as the official code computes it on N GPUs under DDP (``dist.barlow_gpus``):
``barlow_loss_func`` standardizes per GPU, all-reduces C outside autograd and divides it by the world size inside,
and DDP averages the gradients. Restated here per GPU in float64: the value is the loss of the mean C, every Barlow
gradient 1/N of that loss's gradient, and PNR's negative term (a per-sample mean) exact, so λ_n acts twice at N = 2."""
from __future__ import annotations

import pytest
import torch

from fastpnr.config import DistConfig
from fastpnr.system.distributed import SINGLE, from_env
from fastpnr.errors import ConfigError
from fastpnr.losses import barlow_loss
from fastpnr.losses.pnr_barlow import pnr_barlow_terms
from fastpnr.losses.barlow import official_ddp_correlation
from tests.losses._ref import TOL, grads, mean, rand

LAMB, SCALE = 5e-3, 0.1


def ref_standardize(z):
    n = z.shape[0]
    mu = sum(z[i] for i in range(n)) / n
    var = sum((z[i] - mu) ** 2 for i in range(n)) / n
    return torch.stack([(z[i] - mu) / torch.sqrt(var + 1e-5) for i in range(n)])


def ref_c(z1, z2):
    a, b = ref_standardize(z1), ref_standardize(z2)
    n, d = z1.shape
    return torch.stack([torch.stack([sum(a[k, i] * b[k, j] for k in range(n)) / n for j in range(d)])
                        for i in range(d)])


def ref_bt(c):
    d = c.shape[0]
    return SCALE * sum((1 - c[i, i]) ** 2 if i == j else LAMB * c[i, j] ** 2 for i in range(d) for j in range(d))


def ref_official_value(z1, z2, gpus):
    """The loss of the mean over GPUs of each GPU's C (each GPU: its consecutive rows, standardized on its own)."""
    return ref_bt(mean(ref_c(a, b) for a, b in zip(z1.chunk(gpus), z2.chunk(gpus))))


@pytest.mark.parametrize("gpus", [2, 4])
def test_value_is_the_mean_gpu_correlation_and_gradients_are_one_over_gpus(gpus):
    z1, z2 = rand(8, 3, seed=1, scale=2.0), rand(8, 3, seed=2)
    ours = barlow_loss(z1, z2, LAMB, SCALE, correlation=lambda a, b: official_ddp_correlation(a, b, gpus))
    ref = ref_official_value(z1, z2, gpus)
    torch.testing.assert_close(ours, ref, **TOL)
    for g_ours, g_ref in zip(grads(ours, [z1, z2]), grads(ref, [z1, z2])):
        torch.testing.assert_close(g_ours, g_ref / gpus, **TOL)


def test_one_gpu_is_the_exact_loss():
    z1, z2 = rand(6, 4, seed=3), rand(6, 4, seed=4)
    ours = barlow_loss(z1, z2, LAMB, SCALE, correlation=lambda a, b: official_ddp_correlation(a, b, 1))
    exact = barlow_loss(z1, z2, LAMB, SCALE)
    torch.testing.assert_close(ours, exact, **TOL)
    for a, b in zip(grads(ours, [z1, z2]), grads(exact, [z1, z2])):
        torch.testing.assert_close(a, b, **TOL)


def test_two_ranks_averaging_their_gradients_equal_one_process_emulating_two_gpus():
    """Each rank holds one GPU's rows and sums C over the ranks; fastpnr's trainer averages the ranks' gradients."""
    z1, z2 = rand(8, 3, seed=5), rand(8, 3, seed=6)
    halves = list(zip(z1.chunk(2), z2.chunk(2)))
    total = sum(official_ddp_correlation(a.detach(), b.detach(), 1) for a, b in halves)  # what all_reduce returns
    rank_grads = []
    for a, b in halves:
        loss = barlow_loss(a, b, LAMB, SCALE, correlation=lambda x, y: official_ddp_correlation(
            x, y, 2, world_size=2, all_reduce_sum=lambda c: total))
        torch.testing.assert_close(loss, ref_official_value(z1, z2, 2), **TOL)  # every rank: the global value
        rank_grads.append(grads(loss, [z1, z2]))
    averaged = [(g0 + g1) / 2 for g0, g1 in zip(*[[g if g is not None else 0 for g in gs] for gs in rank_grads])]
    one = barlow_loss(z1, z2, LAMB, SCALE, correlation=lambda x, y: official_ddp_correlation(x, y, 2))
    for a, b in zip(averaged, grads(one, [z1, z2])):
        torch.testing.assert_close(a, b, **TOL)


def test_pnr_negative_term_stays_exact_so_lambda_n_acts_twice_at_two_gpus():
    u1, u2, f1, f2 = (rand(8, 3, seed=s) for s in range(10, 14))
    kw = dict(pos_weight=1.0, neg_weight=1.0, lamb=LAMB, scale=SCALE)
    pull, push = pnr_barlow_terms(u1, u2, f1, f2, **kw, correlation=lambda a, b: official_ddp_correlation(a, b, 2))
    # restated: the pull at the mean per-GPU C, with half its gradient; the push a batch mean, gradient untouched
    ref_pull = 0.5 * (ref_official_value(u1, f1, 2) + ref_official_value(u2, f2, 2))
    exact_pull, exact_push = pnr_barlow_terms(u1, u2, f1, f2, **kw)
    torch.testing.assert_close(pull, ref_pull, **TOL)
    torch.testing.assert_close(push, exact_push, **TOL)
    official = grads(pull - push, [u1, u2])
    # = (1/2) d[pull - 2 * push]: the configured λ_n acts as 2 λ_n against the Barlow terms
    doubled = grads(ref_pull - 2 * exact_push, [u1, u2])
    for a, b in zip(official, doubled):
        torch.testing.assert_close(a, 0.5 * b, **TOL)


def test_bad_gpu_counts_are_one_line():
    z = torch.randn(6, 3)
    for gpus, world, text in ((3, 2, "a multiple of the world size 2"), (4, 1, "a divisor of the batch")):
        with pytest.raises(ConfigError) as exc:
            official_ddp_correlation(z, z, gpus, world_size=world)
        assert "\n" not in str(exc.value) and f"dist.barlow_gpus={gpus}" in str(exc.value) and text in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        DistConfig(barlow_gpus=0)
    assert "dist.barlow_gpus=0" in str(exc.value)


def test_the_option_reaches_the_barlow_method_in_one_process(monkeypatch):
    from fastpnr.config import build_config
    from fastpnr.methods import build_method

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert from_env(torch.device("cpu"), DistConfig()) is SINGLE and SINGLE.barlow_correlation() is None
    dist = from_env(torch.device("cpu"), DistConfig(barlow_gpus=2))
    assert dist is not SINGLE and dist.barlow_gpus == 2 and not dist.enabled
    cfg = build_config("smoke", {"method": "barlow", "method.proj_hidden": 8, "method.proj_out": 4, "model.width": 2,
                                 "dist.barlow_gpus": 2})
    torch.manual_seed(0)
    m = build_method(cfg.method, cfg.model, num_classes=10)
    out = m.forward_views([torch.randn(8, 3, 8, 8) for _ in range(2)])
    exact, _ = m.ssl_loss(out)
    m.dist = dist
    official, _ = m.ssl_loss(out)
    z1, z2 = out["z"]
    expected = barlow_loss(z1, z2, cfg.method.lamb, cfg.method.scale,
                           correlation=lambda a, b: official_ddp_correlation(a, b, 2))
    torch.testing.assert_close(official, expected)
    assert not torch.allclose(official, exact)  # per-GPU standardization changes the value


@pytest.mark.parametrize("preset", ["imagenet100-5t", "imagenet100-data-5t", "domainnet-6t"])
def test_two_gpu_presets_say_they_run_exact_barlow_gradients_and_name_the_option(preset):
    from fastpnr.config import PRESETS, build_config

    assert "--dist.barlow_gpus 2" in PRESETS[preset]["description"]
    assert build_config(preset, {"method": "barlow"}).dist.barlow_gpus is None
    assert build_config(preset, {"method": "barlow", "dist.barlow_gpus": 2}).dist.barlow_gpus == 2
