import pytest

from fastpnr.losses import pnr_barlow_regularizer
from tests.losses import _stats
from tests.losses._ref import assert_no_grad, assert_values_and_grads, cos, mean, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


@pytest.mark.parametrize("b,lam_d,lam_n", [(5, 1.0, 1.0), (7, 1.0, 0.1)])
def test_matches_loop_reference_and_frozen_gets_no_grad(b, lam_d, lam_n):
    u1, u2, f1, f2 = xs = [rand(b, 3, seed=s) for s in range(4)]
    lamb, scale = 5e-3, 0.1
    neg_cos = lambda a, c: -mean(cos(a[i], c[i]) for i in range(b))  # noqa: E731 (the anchor's simsiam_loss_func)
    ref = (lam_d * 0.5 * (_stats.barlow(u1, f1, lamb, scale) + _stats.barlow(u2, f2, lamb, scale))
           - lam_n * 0.5 * (neg_cos(u1, f2) + neg_cos(u2, f1)))
    ours = pnr_barlow_regularizer(*xs, pos_weight=lam_d, neg_weight=lam_n, lamb=lamb, scale=scale)
    assert_values_and_grads(ours, ref, [u1, u2], **TOL)
    assert_no_grad(ours, [f1, f2])
