import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import pnr_moco_loss
from tests.losses._ref import assert_close, assert_no_grad, assert_values_and_grads, dot, log_sum_exp, mean, one_line, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


def unit(x):
    with torch.no_grad():
        x /= x.norm(dim=1, keepdim=True)
    return x


def ref_ce(a, pos_rows, negatives, t):
    rows = []
    for i in range(a.shape[0]):
        pos = dot(a[i], pos_rows[i]) / t
        rows.append(-pos + log_sum_exp([pos] + [dot(a[i], n) / t for n in negatives]))
    return mean(rows)


def ref_pnr_moco(q, k, p, f, queue, frozen_queue, t, td):
    negatives = list(queue) + list(frozen_queue)  # N = Q ∪ Q' in both terms
    return ref_ce(q, k, negatives, t) + ref_ce(p, f, negatives, td)


def inputs(b, k1, k2, d=4):
    return [unit(rand(n, d, seed=s)) for s, n in enumerate([b, b, b, b, k1, k2])]


@pytest.mark.parametrize("b,k1,k2,t,td", [(5, 6, 4, 0.2, 0.2), (7, 3, 5, 0.1, 0.4)])
def test_matches_loop_reference_and_gradient_flows_to_q_and_p_only(b, k1, k2, t, td):
    q, k, p, f, queue, frozen_queue = xs = inputs(b, k1, k2)
    ours = pnr_moco_loss(*xs, t, td)
    assert_values_and_grads(ours, ref_pnr_moco(*xs, t, td), [q, p], **TOL)
    assert_no_grad(ours, [k, f, queue, frozen_queue])


def test_both_queues_are_negatives_of_both_terms():
    """d loss/d q sees only the main term and d loss/d p only the regularizer: each must change with each queue."""
    q, k, p, f, queue, frozen_queue = inputs(5, 6, 4)
    other_queue, other_frozen = unit(rand(6, 4, seed=20)), unit(rand(4, 4, seed=21))

    def grads(qu, fq):
        return torch.autograd.grad(pnr_moco_loss(q, k, p, f, qu, fq, 0.2, 0.3), [q, p])

    g_q, g_p = grads(queue, frozen_queue)
    for qu, fq in [(other_queue, frozen_queue), (queue, other_frozen)]:
        h_q, h_p = grads(qu, fq)
        assert (g_q - h_q).abs().max() > 1e-4 and (g_p - h_p).abs().max() > 1e-4


def test_temperatures_apply_to_their_own_terms():
    q, k, p, f, queue, frozen_queue = xs = inputs(5, 6, 4)
    assert_close(pnr_moco_loss(*xs, 0.2, 0.5), ref_pnr_moco(*xs, 0.2, 0.5), **TOL)
    assert (pnr_moco_loss(*xs, 0.2, 0.5) - pnr_moco_loss(*xs, 0.5, 0.2)).abs() > 1e-3


def test_backend_is_passed_to_kernel(fake_kernel):
    pnr_moco_loss(*inputs(5, 6, 4), 0.2, 0.3, backend="triton")
    assert [c["temperature"] for c in fake_kernel] == [0.2, 0.3]
    for call in fake_kernel:
        assert call["backend"] == "triton" and call["positive_in_denominator"] is True and len(call["keys"]) == 2


@pytest.mark.parametrize("frozen_queue,td", [(torch.zeros(4, 3), 0.2), (torch.zeros(4, 4), 0.0)])
def test_bad_arguments_raise(frozen_queue, td):
    z = torch.zeros(5, 4)
    with pytest.raises(ConfigError) as exc:
        pnr_moco_loss(z, z, z, z, torch.zeros(6, 4), frozen_queue, 0.2, td)
    assert one_line(exc)
