import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import pnr_vicreg_regularizer
from tests.losses._ref import assert_no_grad, assert_values_and_grads, mse, one_line, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


@pytest.mark.parametrize("b,lam_d,lam_n", [(5, 25.0, 23.0), (7, 25.0, 5.0), (5, 25.0, 0.0)])
def test_matches_loop_reference_and_frozen_gets_no_grad(b, lam_d, lam_n):
    u1, u2, f1, f2 = xs = [rand(b, 4, seed=s) for s in range(4)]
    ref = lam_d * 0.5 * (mse(u1, f1) + mse(u2, f2)) - lam_n * 0.5 * (mse(u1, f2) + mse(u2, f1))
    ours = pnr_vicreg_regularizer(*xs, pos_weight=lam_d, neg_weight=lam_n)
    assert_values_and_grads(ours, ref, [u1, u2], **TOL)
    assert_no_grad(ours, [f1, f2])


@pytest.mark.parametrize("lam_d,lam_n", [(25.0, 25.0), (5.0, 23.0), (1.0, -1.0)])
def test_unbounded_weights_raise(lam_d, lam_n):
    z = torch.zeros(5, 4)
    with pytest.raises(ConfigError) as exc:
        pnr_vicreg_regularizer(z, z, z, z, pos_weight=lam_d, neg_weight=lam_n)
    assert one_line(exc) and "neg_weight" in str(exc.value)
