import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import simsiam_loss
from tests.losses._ref import assert_values_and_grads, cos, mean, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


@pytest.mark.parametrize("b,d", [(5, 6), (7, 3)])
def test_matches_loop_reference_with_gradient_to_both_args(b, d):
    p, z = rand(b, d, seed=1), rand(b, d, seed=2)
    ref = -mean(cos(p[i], z[i]) for i in range(b))
    assert_values_and_grads(simsiam_loss(p, z), ref, [p, z], **TOL)


def test_shape_mismatch_raises():
    with pytest.raises(ConfigError):
        simsiam_loss(torch.zeros(5, 4), torch.zeros(4, 4))
