"""POCON's distance against an element-by-element restatement of alviur/pocon_wacv2024 sslModels.py L160-161 /
L182-184: torch.dist(normalize(z1), normalize(f1)) + torch.dist(normalize(z1_2), normalize(f2))."""
import pytest
import torch

from fastpnr.losses import pocon_distill
from tests.losses._ref import TOL, assert_no_grad, assert_values_and_grads, norm, rand


def ref_pocon(p1, p2, t1, t2):
    """sqrt(sum_ij (p_ij / |p_i| - t_ij / |t_i|)^2) per view, summed over the views."""
    def frobenius(p, t):
        total = 0
        for i in range(p.shape[0]):
            pi, ti = p[i] / norm(p[i]), t[i] / norm(t[i])
            total = total + sum((pi[j] - ti[j]) ** 2 for j in range(p.shape[1]))
        return torch.sqrt(total)
    return frobenius(p1, t1) + frobenius(p2, t2)


@pytest.mark.parametrize("b,d", [(5, 4), (7, 6)])
def test_matches_element_reference_and_targets_get_no_grad(b, d):
    p1, p2, t1, t2 = xs = [rand(b, d, seed=20 + s, scale=0.5 + s) for s in range(4)]
    ours = pocon_distill(*xs)
    assert_values_and_grads(ours, ref_pocon(*xs), [p1, p2], **TOL)
    assert_no_grad(ours, [t1, t2])


def test_gradcheck_in_float64():
    p1, p2, t1, t2 = [rand(4, 3, seed=30 + s) for s in range(4)]
    assert torch.autograd.gradcheck(lambda a, b: pocon_distill(a, b, t1.detach(), t2.detach()), (p1, p2))


def test_is_a_batch_sum_not_a_mean_and_zero_when_aligned():
    t1, t2 = rand(6, 5, seed=1).detach(), rand(6, 5, seed=2).detach()
    assert pocon_distill(2 * t1, 3 * t2, t1, t2).abs() < 1e-12
    one = pocon_distill(-t1[:1], -t2[:1], t1[:1], t2[:1])  # opposite unit rows: distance 2 per view
    torch.testing.assert_close(one, torch.tensor(4.0, dtype=torch.float64), **TOL)
    four = pocon_distill(-t1[:1].repeat(4, 1), -t2[:1].repeat(4, 1), t1[:1].repeat(4, 1), t2[:1].repeat(4, 1))
    torch.testing.assert_close(four, 2 * one, **TOL)  # sqrt(4) times: a Frobenius norm over the batch
