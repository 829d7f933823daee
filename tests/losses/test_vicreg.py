import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import covariance_loss, invariance_loss, variance_loss, vicreg_loss
from tests.losses import _stats
from tests.losses._ref import assert_values_and_grads, mse, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


def views(n, d):
    """Half the columns with std well above 1, half well below, so the hinge is both active and inactive."""
    z1, z2 = rand(n, d, seed=1), rand(n, d, seed=2)
    col_scale = torch.tensor([3.0 if j % 2 else 0.3 for j in range(d)], dtype=torch.float64)
    with torch.no_grad():
        z1 *= col_scale
        z2 *= col_scale.flip(0)
    return z1, z2


@pytest.mark.parametrize("n,d", [(5, 4), (7, 3)])
def test_terms_match_loop_reference(n, d):
    z1, z2 = views(n, d)
    assert_values_and_grads(invariance_loss(z1, z2), mse(z1, z2), [z1, z2], **TOL)
    assert_values_and_grads(variance_loss(z1, z2), _stats.variance_term(z1, z2), [z1, z2], **TOL)
    assert_values_and_grads(covariance_loss(z1, z2), _stats.covariance_term(z1, z2), [z1, z2], **TOL)


def test_total_is_the_weighted_sum():
    z1, z2 = views(5, 4)
    ref = 25 * mse(z1, z2) + 25 * _stats.variance_term(z1, z2) + 1 * _stats.covariance_term(z1, z2)
    assert_values_and_grads(vicreg_loss(z1, z2, 25.0, 25.0, 1.0), ref, [z1, z2], **TOL)
    ref = 2 * mse(z1, z2) + 3 * _stats.variance_term(z1, z2) + 0.5 * _stats.covariance_term(z1, z2)
    assert_values_and_grads(vicreg_loss(z1, z2, sim_weight=2.0, var_weight=3.0, cov_weight=0.5), ref, [z1, z2],
                            **TOL)


def test_one_row_raises():
    with pytest.raises(ConfigError):
        vicreg_loss(torch.zeros(1, 4), torch.zeros(1, 4), 25.0, 25.0, 1.0)
