import pytest
import torch

from fastpnr.errors import ConfigError
from fastpnr.losses import gsg_loss, gsg_pairing
from tests.losses._ref import assert_close, assert_no_grad, assert_values_and_grads, cos, mean, norm, one_line, rand

TOL = {"rtol": 1e-9, "atol": 1e-11}


def ref_pairs(z11, z12, z21, z22):
    """Per row, the first (a, b) in the anchor's order 11-21, 11-22, 12-21, 12-22 with the smallest distance."""
    pairs = []
    for i in range(z11.shape[0]):
        options = [(0, 0, z11, z21), (0, 1, z11, z22), (1, 0, z12, z21), (1, 1, z12, z22)]
        dist = [float(norm(x[i] - y[i]).detach()) for _, _, x, y in options]
        best = dist.index(min(dist))
        pairs.append(options[best][:2])
    return pairs


def ref_gsg(p11, p12, p21, p22, z11, z12, z21, z22):
    p = {(1, 0): p11, (1, 1): p12, (2, 0): p21, (2, 1): p22}
    z = {(1, 0): z11, (1, 1): z12, (2, 0): z21, (2, 1): z22}
    rows = []
    for i, (a, b) in enumerate(ref_pairs(z11, z12, z21, z22)):
        rows.append(-0.5 * (cos(p[1, a][i], z[1, 1 - a][i]) + cos(p[2, b][i], z[2, 1 - b][i])))
    return mean(rows)


def inputs(n, d=4):
    return [rand(n, d, seed=s) for s in range(8)]


@pytest.mark.parametrize("n", [5, 7])
def test_matches_loop_reference_and_targets_get_no_grad(n):
    xs = inputs(n)
    ours = gsg_loss(*xs)
    assert_values_and_grads(ours, ref_gsg(*xs), xs[:4], **TOL)
    assert_no_grad(ours, xs[4:])
    a, b = gsg_pairing(*xs[4:])
    assert list(zip(a.tolist(), b.tolist())) == ref_pairs(*xs[4:])


def test_picks_the_constructed_closest_pair_and_only_sources_get_gradient():
    """Row r plants z_1a ≈ z_2b for the r-th (a, b); the other views are far away."""
    n, d = 4, 3
    planted = [(0, 0), (0, 1), (1, 0), (1, 1)]
    g = torch.Generator().manual_seed(0)
    z = {key: 10 * torch.randn(n, d, generator=g, dtype=torch.float64) for key in [(1, 0), (1, 1), (2, 0), (2, 1)]}
    for r, (a, b) in enumerate(planted):
        z[2, b][r] = z[1, a][r] + 0.01
    zs = [z[1, 0], z[1, 1], z[2, 0], z[2, 1]]
    a_idx, b_idx = gsg_pairing(*zs)
    assert a_idx.dtype == torch.int64 and list(zip(a_idx.tolist(), b_idx.tolist())) == planted

    ps = [rand(n, d, seed=10 + s) for s in range(4)]  # p11, p12, p21, p22
    zs = [x.requires_grad_(True) for x in zs]
    loss = gsg_loss(*ps, *zs)
    g11, g12, g21, g22 = torch.autograd.grad(loss, ps)
    for r, (a, b) in enumerate(planted):
        src1, other1 = (g12, g11) if a else (g11, g12)
        src2, other2 = (g22, g21) if b else (g21, g22)
        assert src1[r].abs().sum() > 0 and src2[r].abs().sum() > 0
        assert other1[r].abs().sum() == 0 and other2[r].abs().sum() == 0
    assert_no_grad(loss, zs)
    assert_close(loss, ref_gsg(*ps, *zs), **TOL)


def test_shape_mismatch_raises():
    xs = [torch.zeros(5, 4)] * 7 + [torch.zeros(5, 3)]
    with pytest.raises(ConfigError) as exc:
        gsg_loss(*xs)
    assert one_line(exc)
