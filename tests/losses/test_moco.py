import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import moco_loss
from tests.losses._ref import assert_no_grad, assert_values_and_grads, dot, log_sum_exp, mean, one_line, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


def ref_moco(q, k, queue, t):
    rows = []
    for i in range(q.shape[0]):
        pos = dot(q[i], k[i]) / t
        rows.append(-pos + log_sum_exp([pos] + [dot(q[i], queue[n]) / t for n in range(queue.shape[0])]))
    return mean(rows)


@pytest.mark.parametrize("b,k,t", [(5, 9, 0.2), (7, 3, 0.1)])
def test_matches_loop_reference_and_gradient_flows_to_q_only(b, k, t):
    q, key, queue = rand(b, 4, seed=1), rand(b, 4, seed=2), rand(k, 4, seed=3)
    ours = moco_loss(q, key, queue, t)
    assert_values_and_grads(ours, ref_moco(q, key, queue, t), [q], **TOL)
    assert_no_grad(ours, [key, queue])


def test_backend_is_passed_to_kernel(fake_kernel):
    moco_loss(rand(5, 4, seed=1), rand(5, 4, seed=2), rand(6, 4, seed=3), 0.2, backend="triton")
    (call,) = fake_kernel
    assert call["backend"] == "triton" and call["positive_in_denominator"] is True
    assert list(call["exclude_diagonal"]) == [False] and call["keys"][0].shape == (6, 4)


@pytest.mark.parametrize("queue,t", [(torch.zeros(6, 3), 0.2), (torch.zeros(6, 4), -0.2), (torch.zeros(6), 0.2)])
def test_bad_arguments_raise(queue, t):
    with pytest.raises(ConfigError) as exc:
        moco_loss(torch.zeros(5, 4), torch.zeros(5, 4), queue, t)
    assert one_line(exc)
