"""PFR's loss against a row-by-row restatement of alviur/CVPR_PFR cassle/distillers/pfr.py (training_step, L62-79)."""
import pytest
import torch

from fastpnr.errors import FastPNRError
from fastpnr.losses import pfr_distill
from tests.losses._ref import TOL, assert_no_grad, assert_values_and_grads, cos, mean, one_line, rand


def ref_pfr(p1, p2, f1, f2):
    """distill_loss = -(criterion(p1, frozen_f1).mean() + criterion(p2, frozen_f2).mean()) * 0.5, criterion the
    cosine similarity of each row."""
    b = p1.shape[0]
    return -0.5 * (mean(cos(p1[i], f1[i]) for i in range(b)) + mean(cos(p2[i], f2[i]) for i in range(b)))


@pytest.mark.parametrize("b,d", [(5, 4), (7, 6)])
def test_matches_row_reference_and_frozen_features_get_no_grad(b, d):
    p1, p2, f1, f2 = xs = [rand(b, d, seed=s, scale=0.5 + s) for s in range(4)]
    ours = pfr_distill(*xs)
    assert_values_and_grads(ours, ref_pfr(*xs), [p1, p2], **TOL)
    assert_no_grad(ours, [f1, f2])


def test_gradcheck_in_float64():
    p1, p2, f1, f2 = [rand(4, 3, seed=10 + s) for s in range(4)]
    assert torch.autograd.gradcheck(lambda a, b: pfr_distill(a, b, f1.detach(), f2.detach()), (p1, p2))


def test_is_minus_one_when_projections_align_and_scale_free():
    f1, f2 = rand(6, 5, seed=1).detach(), rand(6, 5, seed=2).detach()
    torch.testing.assert_close(pfr_distill(3 * f1, 0.2 * f2, f1, f2), torch.tensor(-1.0, dtype=torch.float64), **TOL)
    torch.testing.assert_close(pfr_distill(-f1, -f2, f1, f2), torch.tensor(1.0, dtype=torch.float64), **TOL)


def test_shape_mismatch_is_one_line():
    a, b = rand(4, 3, seed=0), rand(4, 2, seed=1)
    with pytest.raises(FastPNRError) as exc:
        pfr_distill(a, a, a, b)
    assert one_line(exc) and "f2.shape" in str(exc.value)
