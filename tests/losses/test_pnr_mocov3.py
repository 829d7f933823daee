"""MoCo v3 + PNR against a per-row float64 restatement: in-batch keys and the frozen model's embeddings of the keys'
view as negatives of both terms, no sample its own negative, 2t / 2t_d scales, both directions summed."""
import pytest
import torch

from fastpnr.losses import mocov3_loss, pnr_mocov3_loss
from tests.losses._ref import assert_no_grad, assert_values_and_grads, dot, log_sum_exp, mean, rand, unit_rows


def ref_direction(q, k, p, f, g, t, td):
    Q, K, P, F, G = (unit_rows(x) for x in (q, k.detach(), p, f.detach(), g.detach()))
    n = len(Q)
    main, reg = [], []
    for i in range(n):
        pos = dot(Q[i], K[i]) / t
        main.append(-pos + log_sum_exp([dot(Q[i], K[j]) / t for j in range(n)]
                                       + [dot(Q[i], G[j]) / t for j in range(n) if j != i]))
        pos = dot(P[i], F[i]) / td
        reg.append(-pos + log_sum_exp([pos] + [dot(P[i], K[j]) / td for j in range(n) if j != i]
                                      + [dot(P[i], G[j]) / td for j in range(n) if j != i]))
    return 2 * t * mean(main) + 2 * td * mean(reg)


@pytest.mark.parametrize("b,d,t,td", [(5, 4, 0.2, 0.2), (4, 6, 0.1, 0.5)])
def test_matches_loop_reference_and_gradients_reach_q_and_p_only(b, d, t, td):
    q1, q2, k1, k2, p1, p2, f1, f2 = xs = [rand(b, d, seed=s) for s in range(8)]
    ours = pnr_mocov3_loss(*xs, temperature=t, distill_temperature=td)
    ref = ref_direction(q1, k2, p1, f1, f2, t, td) + ref_direction(q2, k1, p2, f2, f1, t, td)
    assert_values_and_grads(ours, ref, [q1, q2, p1, p2])
    assert_no_grad(ours, [k1, k2, f1, f2])


def test_the_frozen_embeddings_are_negatives_of_the_main_term():
    """d loss / d q is the main term's alone: it changes when only the frozen embeddings change, and it is MoCo v3's
    gradient plus the pseudo-negatives' share (the main term without them is mocov3_loss)."""
    q1, q2, k1, k2, p1, p2, f1, f2 = [rand(5, 4, seed=s) for s in range(8)]

    def grad_q(f_a, f_b):
        return torch.autograd.grad(pnr_mocov3_loss(q1, q2, k1, k2, p1, p2, f_a, f_b, 0.2, 0.2), [q1])[0]

    assert not torch.allclose(grad_q(f1, f2), grad_q(rand(5, 4, seed=30), rand(5, 4, seed=31)))
    # frozen embeddings far from every query (opposite of all of them): the main term tends to MoCo v3's
    far = -torch.ones(5, 4, dtype=torch.float64) * 1e3
    q_pos = q1.detach().abs().requires_grad_(True), q2.detach().abs().requires_grad_(True)
    with_far = torch.autograd.grad(pnr_mocov3_loss(*q_pos, k1, k2, p1, p2, far, far, 0.05, 0.2), list(q_pos))
    plain = torch.autograd.grad(mocov3_loss(*q_pos, k1, k2, 0.05), list(q_pos))
    for a, b in zip(with_far, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
