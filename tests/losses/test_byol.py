import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import byol_loss
from tests.losses._ref import assert_values_and_grads, cos, mean, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


def ref_byol(p, z):
    return mean(2 - 2 * cos(p[i], z[i]) for i in range(p.shape[0]))


@pytest.mark.parametrize("b,d", [(5, 6), (7, 3)])
def test_matches_loop_reference_with_gradient_to_both_args(b, d):
    """No stop-gradient inside: the target ``z`` gets its gradient too."""
    p, z = rand(b, d, seed=1), rand(b, d, seed=2, scale=2.0)
    assert_values_and_grads(byol_loss(p, z), ref_byol(p, z), [p, z], **TOL)


def test_shape_mismatch_raises():
    with pytest.raises(ConfigError):
        byol_loss(torch.zeros(5, 4), torch.zeros(5, 3))
