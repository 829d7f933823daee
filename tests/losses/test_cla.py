"""CLA's alignment loss (fastpnr.losses.cla) against an independent float64 restatement of the paper's equations:
L_align = L_kind(g(z_1), g(z_2); sg z'_1, sg z'_2), per method family, for CLA-E (two past views) and CLA-R (one
stored projection per image, the same for both views)."""
import pytest
import torch

from fastpnr.losses import alignment_loss
from tests.losses._ref import assert_no_grad, assert_values_and_grads, cos, dot, log_sum_exp, mean, mse, norm, rand

T, LAMB, SCALE = 0.2, 5e-3, 0.1


def unit(x):
    return [x[i] / norm(x[i]) for i in range(x.shape[0])]


def ref_contrastive(u1, u2, f1, f2):
    """1/2 [SD(P, F) + SD(F, P)], P the 2B unit predicted rows, F the 2B unit past rows (detached);
    SD(A, B) = mean_i -log(exp(a_i.b_i / t) / sum_k exp(a_i.b_k / t))."""
    p = unit(torch.cat([u1, u2]))
    f = [r.detach() for r in unit(torch.cat([f1, f2]))]

    def sd(a, b):
        return mean(-(dot(a[i], b[i]) / T - log_sum_exp([dot(a[i], bk) / T for bk in b])) for i in range(len(a)))

    return 0.5 * (sd(p, f) + sd(f, p))


def ref_predictive(u1, u2, f1, f2):
    """1/2 sum_v mean_i (2 - 2 cos(u_v,i, sg f_v,i))."""
    return 0.5 * sum(mean(2 - 2 * cos(u[i], f[i].detach()) for i in range(u.shape[0])) for u, f in ((u1, f1), (u2, f2)))


def ref_mse(u1, u2, f1, f2):
    return 0.5 * (mse(u1, f1.detach()) + mse(u2, f2.detach()))


def ref_barlow(u1, u2, f1, f2):
    """1/2 sum_v scale [sum_i (1 - C_ii)^2 + lamb sum_{i!=j} C_ij^2], C = std(u_v)^T std(sg f_v) / N, std the
    per-column standardization with the biased variance and eps 1e-5."""
    def std(x):
        n = x.shape[0]
        cols = []
        for j in range(x.shape[1]):
            m = sum(x[i, j] for i in range(n)) / n
            v = sum((x[i, j] - m) ** 2 for i in range(n)) / n
            cols.append([(x[i, j] - m) / torch.sqrt(v + 1e-5) for i in range(n)])
        return cols

    def bt(a, b):
        ca, cb, n = std(a), std(b.detach()), a.shape[0]
        d = a.shape[1]
        c = [[sum(ca[i][k] * cb[j][k] for k in range(n)) / n for j in range(d)] for i in range(d)]
        return SCALE * (sum((1 - c[i][i]) ** 2 for i in range(d)) + LAMB * sum(c[i][j] ** 2 for i in range(d)
                                                                             for j in range(d) if i != j))

    return 0.5 * (bt(u1, f1) + bt(u2, f2))


REFS = {"simclr": ref_contrastive, "mocov2plus": ref_contrastive, "byol": ref_predictive, "simsiam": ref_predictive,
        "vicreg": ref_mse, "barlow": ref_barlow}


def _views(variant, b, d, seed):
    """(u1, u2, f1, f2): predicted current and past projections of two views; CLA-R: one stored one for both."""
    u1, u2, f1 = (rand(b, d, seed=seed + k) for k in range(3))
    return u1, u2, f1, f1 if variant == "cla_r" else rand(b, d, seed=seed + 3)


@pytest.mark.parametrize("kind", sorted(REFS))
@pytest.mark.parametrize("variant", ["cla_e", "cla_r"])
def test_alignment_loss_matches_the_restatement(kind, variant):
    u1, u2, f1, f2 = _views(variant, 6, 4, seed=1)
    ours = alignment_loss(kind, u1, u2, f1, f2, temperature=T, barlow_lamb=LAMB, barlow_scale=SCALE)
    assert_values_and_grads(ours, REFS[kind](u1, u2, f1, f2), [u1, u2])
    assert_no_grad(ours, [f1, f2])  # the past is a target: no gradient flows into it


def test_alignment_is_smallest_when_the_prediction_is_the_past():
    """A sanity anchor of the equations: predicting the past exactly gives the predictive loss 0."""
    f = rand(5, 3, seed=7).detach()
    assert float(alignment_loss("byol", f, f, f, f, temperature=T, barlow_lamb=LAMB, barlow_scale=SCALE)) == \
        pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", sorted(REFS))
@pytest.mark.parametrize("variant", ["cla_e", "cla_r"])
def test_the_cosine_criterion_is_minus_the_mean_cosine_for_every_kind(kind, variant):
    """The authors' command-line criterion: -1/2 sum_v mean_i cos(u_v,i, sg f_v,i), whatever the method."""
    b = 5
    u1, u2, f1, f2 = _views(variant, b, 4, seed=11)
    ours = alignment_loss(kind, u1, u2, f1, f2, temperature=T, barlow_lamb=LAMB, barlow_scale=SCALE,
                          criterion="cosine")
    ref = -0.5 * sum(mean(cos(u[i], f[i].detach()) for i in range(b)) for u, f in ((u1, f1), (u2, f2)))
    assert_values_and_grads(ours, ref, [u1, u2])
    assert_no_grad(ours, [f1, f2])
