import pytest
import torch

from fastpnr.losses import contrastive_distill, decorrelative_distill, predictive_distill, predictive_mse_distill
from tests.losses import _stats
from tests.losses._ref import (assert_close, assert_no_grad, assert_values_and_grads, cos, dot, log_sum_exp, mean,
                               mse, rand, unit_rows)

TOL = {"rtol": 1e-9, "atol": 1e-11}


def views(b, d=4):
    return [rand(b, d, seed=s, scale=1.0 + s) for s in range(4)]


@pytest.mark.parametrize("b", [5, 7])
def test_predictive(b):
    u1, u2, f1, f2 = xs = views(b)
    d = lambda a, c: mean(2 - 2 * cos(a[i], c[i]) for i in range(b))  # noqa: E731
    ours = predictive_distill(*xs)
    assert_values_and_grads(ours, 0.5 * (d(u1, f1) + d(u2, f2)), [u1, u2], **TOL)
    assert_no_grad(ours, [f1, f2])


@pytest.mark.parametrize("b", [5, 7])
def test_predictive_mse(b):
    u1, u2, f1, f2 = xs = views(b)
    ours = predictive_mse_distill(*xs)
    assert_values_and_grads(ours, 0.5 * (mse(u1, f1) + mse(u2, f2)), [u1, u2], **TOL)
    assert_no_grad(ours, [f1, f2])


@pytest.mark.parametrize("b", [5, 7])
def test_decorrelative(b):
    u1, u2, f1, f2 = xs = views(b, d=3)
    ref = 0.5 * (_stats.barlow(u1, f1, 5e-3, 0.1) + _stats.barlow(u2, f2, 5e-3, 0.1))
    ours = decorrelative_distill(*xs, lamb=5e-3, scale=0.1)
    assert_values_and_grads(ours, ref, [u1, u2], **TOL)
    assert_no_grad(ours, [f1, f2])


def ref_sd(a, b, t, positive_in_denominator=True):
    rows = []
    for i in range(len(a)):
        pos = dot(a[i], b[i]) / t
        rows.append(-pos + log_sum_exp([dot(a[i], b[k]) / t for k in range(len(b))
                                        if positive_in_denominator or k != i]))
    return mean(rows)


def ref_contrastive(p1, p2, f1, f2, t, positive_in_denominator=True):
    p, f = unit_rows(torch.cat([p1, p2])), unit_rows(torch.cat([f1, f2]))
    return 0.5 * (ref_sd(p, f, t, positive_in_denominator) + ref_sd(f, p, t, positive_in_denominator))


@pytest.mark.parametrize("b,t", [(5, 0.2), (7, 0.5)])
def test_contrastive(b, t):
    p1, p2, f1, f2 = xs = views(b)
    ours = contrastive_distill(*xs, temperature=t)
    assert_values_and_grads(ours, ref_contrastive(*xs, t), [p1, p2], **TOL)
    assert_no_grad(ours, [f1, f2])


def test_contrastive_keeps_the_positive_in_its_denominator():
    xs = views(5)
    assert (contrastive_distill(*xs, 0.2) - ref_contrastive(*xs, 0.2, positive_in_denominator=False)).abs() > 1e-3
    p1, p2, f1, f2 = xs
    assert_close(contrastive_distill(*xs, 0.2), contrastive_distill(3 * p1, p2, f1, 0.5 * f2, 0.2), **TOL)
