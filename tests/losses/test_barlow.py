import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import barlow_loss
from tests.losses import _stats
from tests.losses._ref import assert_close, assert_values_and_grads, one_line, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


@pytest.mark.parametrize("n,d,lamb,scale", [(5, 4, 5e-3, 0.1), (7, 3, 0.5, 0.025)])
def test_matches_loop_reference(n, d, lamb, scale):
    z1, z2 = rand(n, d, seed=1, scale=2.0), rand(n, d, seed=2)
    with torch.no_grad():
        z2 += z1 * 0.5  # some correlation, so the diagonal is not ~0
    assert_values_and_grads(barlow_loss(z1, z2, lamb, scale), _stats.barlow(z1, z2, lamb, scale), [z1, z2], **TOL)


def test_standardization_is_batchnorm1d_train_mode():
    """Cross-check of the restatement against torch's own affine-free BatchNorm1d (biased var, eps 1e-5)."""
    z = rand(5, 3, seed=3)
    bn = torch.nn.BatchNorm1d(3, affine=False).double().train()
    assert_close(_stats.standardize(z), bn(z), **TOL)


@pytest.mark.parametrize("args", [(torch.zeros(1, 3), torch.zeros(1, 3), 5e-3, 0.1),
                                  (torch.zeros(5, 3), torch.zeros(5, 4), 5e-3, 0.1),
                                  (torch.zeros(5, 3), torch.zeros(5, 3), -1.0, 0.1)])
def test_bad_arguments_raise(args):
    with pytest.raises(ConfigError) as exc:
        barlow_loss(*args)
    assert one_line(exc)
