import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import pnr_byol_regularizer
from tests.losses._ref import assert_no_grad, assert_values_and_grads, cos, mean, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


def byol_d(a, b):
    return mean(2 - 2 * cos(a[i], b[i]) for i in range(a.shape[0]))


@pytest.mark.parametrize("b,lam_d,lam_n", [(5, 1.0, 0.5), (7, 1.0, 1.0), (5, 2.0, 0.0)])
def test_matches_loop_reference_and_frozen_gets_no_grad(b, lam_d, lam_n):
    u1, u2, f1, f2 = xs = [rand(b, 4, seed=s) for s in range(4)]
    ref = lam_d * 0.5 * (byol_d(u1, f1) + byol_d(u2, f2)) - lam_n * 0.5 * (byol_d(u1, f2) + byol_d(u2, f1))
    ours = pnr_byol_regularizer(*xs, pos_weight=lam_d, neg_weight=lam_n)
    assert_values_and_grads(ours, ref, [u1, u2], **TOL)
    assert_no_grad(ours, [f1, f2])


def test_negative_weight_must_be_nonnegative():
    z = torch.zeros(5, 4)
    with pytest.raises(ConfigError):
        pnr_byol_regularizer(z, z, z, z, 1.0, -0.5)
