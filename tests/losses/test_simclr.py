import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import simclr_loss
from tests.losses._ref import assert_close, assert_values_and_grads, dot, log_sum_exp, mean, one_line, rand, unit_rows

TOL = {"rtol": 1e-9, "atol": 1e-11}


def ref_simclr(z1, z2, t):
    b = z1.shape[0]
    z = unit_rows(torch.cat([z1, z2]))
    rows = []
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        denom = [dot(z[i], z[k]) / t for k in range(2 * b) if k != i]
        rows.append(-dot(z[i], z[partner]) / t + log_sum_exp(denom))
    return mean(rows)


@pytest.mark.parametrize("b,d,t", [(5, 6, 0.2), (7, 3, 0.5), (1, 4, 0.1)])
def test_matches_loop_reference(b, d, t):
    z1, z2 = rand(b, d, seed=1, scale=3.0), rand(b, d, seed=2)
    assert_values_and_grads(simclr_loss(z1, z2, t), ref_simclr(z1, z2, t), [z1, z2], **TOL)


def test_normalizes_its_inputs():
    z1, z2 = rand(5, 4, seed=1), rand(5, 4, seed=2)
    assert_close(simclr_loss(3 * z1, 0.5 * z2, 0.2), simclr_loss(z1, z2, 0.2), **TOL)


def test_backend_is_passed_to_kernel(fake_kernel):
    simclr_loss(rand(5, 4, seed=1), rand(5, 4, seed=2), 0.2, backend="triton")
    (call,) = fake_kernel
    assert call["backend"] == "triton" and list(call["exclude_diagonal"]) == [True]
    assert call["positive_in_denominator"] is False and call["anchors"].shape == (10, 4)


@pytest.mark.parametrize("z2,t", [(torch.zeros(4, 4), 0.2), (torch.zeros(5, 4), 0.0)])
def test_bad_arguments_raise(z2, t):
    with pytest.raises(ConfigError) as exc:
        simclr_loss(torch.zeros(5, 4), z2, t)
    assert one_line(exc)
