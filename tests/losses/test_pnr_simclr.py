import pytest
import torch

from fastpnr.losses import pnr_simclr_loss
from tests.losses._ref import (assert_close, assert_no_grad, assert_values_and_grads, dot, log_sum_exp, mean, rand,
                               unit_rows)

TOL = {"rtol": 1e-9, "atol": 1e-11}


def ref_pnr_simclr(z1, z2, p1, p2, f1, f2, t, main_drops_f_partner=False, reg_positive_in_denominator=False):
    """§2.2 row by row. The flags switch the anchor's quirks (a) and (b) off, to show they matter."""
    b = z1.shape[0]
    z, p, f = unit_rows(torch.cat([z1, z2])), unit_rows(torch.cat([p1, p2])), unit_rows(torch.cat([f1, f2]))
    main, reg = [], []
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        # quirk (a): only F_i is dropped; F_{i+} stays a pseudo-negative
        f_dropped = {i, partner} if main_drops_f_partner else {i}
        denom = [dot(z[i], z[k]) / t for k in range(2 * b) if k != i]
        denom += [dot(z[i], f[k]) / t for k in range(2 * b) if k not in f_dropped]
        main.append(-dot(z[i], z[partner]) / t + log_sum_exp(denom))
        # quirk (b): the positive P_i.F_i is not in its own denominator; Z_i is dropped, Z_{i+} kept
        pos = dot(p[i], f[i]) / t
        denom = [pos] if reg_positive_in_denominator else []
        denom += [dot(p[i], f[k]) / t for k in range(2 * b) if k != i]
        denom += [dot(p[i], z[k]) / t for k in range(2 * b) if k != i]
        reg.append(-pos + log_sum_exp(denom))
    return mean(main) + mean(reg)


def inputs(b, d=4):
    return [rand(b, d, seed=s, scale=1.0 + s) for s in range(6)]


@pytest.mark.parametrize("b,t", [(5, 0.2), (7, 0.5)])
def test_matches_loop_reference_and_frozen_gets_no_grad(b, t):
    z1, z2, p1, p2, f1, f2 = xs = inputs(b)
    ours = pnr_simclr_loss(*xs, t)
    assert_values_and_grads(ours, ref_pnr_simclr(*xs, t), [z1, z2, p1, p2], **TOL)
    assert_no_grad(ours, [f1, f2])


def test_quirk_a_other_view_frozen_embedding_is_a_negative():
    xs = inputs(5)
    ours = pnr_simclr_loss(*xs, 0.2)
    assert_close(ours, ref_pnr_simclr(*xs, 0.2), **TOL)
    assert (ours - ref_pnr_simclr(*xs, 0.2, main_drops_f_partner=True)).abs() > 1e-3


def test_quirk_b_regularizer_positive_is_not_in_its_denominator():
    xs = inputs(5)
    ours = pnr_simclr_loss(*xs, 0.2)
    assert (ours - ref_pnr_simclr(*xs, 0.2, reg_positive_in_denominator=True)).abs() > 1e-3


def test_view_swap_gives_the_same_value():
    """Quirk (c): the anchor's second, view-swapped call is a row permutation, so one call suffices."""
    z1, z2, p1, p2, f1, f2 = inputs(5)
    assert_close(pnr_simclr_loss(z1, z2, p1, p2, f1, f2, 0.2), pnr_simclr_loss(z2, z1, p2, p1, f2, f1, 0.2), **TOL)


def test_normalizes_its_inputs():
    z1, z2, p1, p2, f1, f2 = inputs(5)
    assert_close(pnr_simclr_loss(z1, z2, p1, p2, f1, f2, 0.2),
                 pnr_simclr_loss(2 * z1, z2, p1, 3 * p2, 0.1 * f1, f2, 0.2), **TOL)


def test_backend_is_passed_to_kernel(fake_kernel):
    pnr_simclr_loss(*inputs(5), 0.2, backend="triton")
    assert len(fake_kernel) == 2
    for call in fake_kernel:
        assert call["backend"] == "triton" and list(call["exclude_diagonal"]) == [True, True]
        assert call["positive_in_denominator"] is False and len(call["keys"]) == 2
