"""MoCo v3's loss against a per-row float64 restatement of 2t [CE(q1; k2) + CE(q2; k1)] with in-batch keys."""
import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import mocov3_loss
from fastpnr.losses.mocov3 import mocov3_contrast
from tests.losses._ref import assert_no_grad, assert_values_and_grads, dot, log_sum_exp, mean, one_line, rand, unit_rows


def ref_contrast(q, k, t):
    """2t mean_i -log softmax_i over the keys of the batch (the positive k_i among them), as CrossEntropy(logits, arange)."""
    qs, ks = unit_rows(q), unit_rows(k.detach())
    rows = [-dot(qs[i], ks[i]) / t + log_sum_exp([dot(qs[i], kj) / t for kj in ks]) for i in range(len(qs))]
    return 2 * t * mean(rows)


@pytest.mark.parametrize("b,d,t", [(5, 4, 0.2), (8, 3, 1.0), (2, 6, 0.07)])
def test_matches_loop_reference_and_only_queries_get_gradients(b, d, t):
    q1, q2, k1, k2 = xs = [rand(b, d, seed=s, scale=1 + s) for s in range(4)]
    ours = mocov3_loss(*xs, temperature=t)
    assert_values_and_grads(ours, ref_contrast(q1, k2, t) + ref_contrast(q2, k1, t), [q1, q2])
    assert_no_grad(ours, [k1, k2])


def test_one_direction_and_the_2t_scale():
    q, k = rand(6, 4, seed=1), rand(6, 4, seed=2)
    assert_values_and_grads(mocov3_contrast(q, k, 0.5), ref_contrast(q, k, 0.5), [q])
    # scale-free inputs: keys equal to the queries give each row the same loss, 2t (log B - (1 - mean off-diagonal)/t)
    x = torch.eye(3, dtype=torch.float64)
    assert mocov3_contrast(x, x, 0.5).item() == pytest.approx(2 * 0.5 * (torch.log(torch.tensor(1 + 2 * torch.e ** -2.0)).item()))


def test_bad_shapes_are_one_line():
    with pytest.raises(ConfigError) as e:
        mocov3_loss(rand(4, 3, seed=0), rand(4, 3, seed=1), rand(4, 3, seed=2), rand(5, 3, seed=3), temperature=0.2)
    assert one_line(e) and "k.shape=(5, 3) is invalid" in str(e.value)
