"""Paired difference to fine-tuning (fastpnr.study.paired): t quantiles against tabulated values, an interval by hand."""
from __future__ import annotations

import math

import pytest

from fastpnr.study.paired import paired_difference, student_t_cdf, student_t_quantile

# t_{0.975, df} from the standard tables (4 decimals)
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 30: 2.0423}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantile_matches_the_table(df):
    assert student_t_quantile(0.975, df) == pytest.approx(T975[df], abs=1e-4)


def test_t_cdf_special_cases_and_scipy_when_installed():
    # df = 1 is the Cauchy distribution: 1/2 + atan(t)/pi; df = 2: 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.0, 1.2, 7.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-14)
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-14)
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed")
    for df in (3, 4, 7, 12):
        for t in (-2.5, 0.3, 1.7):
            assert student_t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)


def test_paired_difference_by_hand():
    ours = {1: 40.0, 2: 42.0, 3: 41.0, 4: 39.0, 5: 43.0}
    base = {1: 39.0, 2: 40.0, 3: 41.5, 4: 38.0, 5: 41.0, 6: 50.0}  # seed 6 has no pair: left out
    r = paired_difference(ours, base)
    # d = 1, 2, -0.5, 1, 2: mean 1.1; sd^2 = (0.01 + 0.81 + 2.56 + 0.01 + 0.81) / 4 = 1.05
    assert r["by_seed"] == {1: 1.0, 2: 2.0, 3: -0.5, 4: 1.0, 5: 2.0} and r["n"] == 5
    assert r["mean"] == pytest.approx(1.1) and r["sd"] == pytest.approx(math.sqrt(1.05))
    half = 2.7764 * math.sqrt(1.05) / math.sqrt(5)
    assert r["ci"][0] == pytest.approx(1.1 - half, abs=1e-4) and r["ci"][1] == pytest.approx(1.1 + half, abs=1e-4)


def test_paired_difference_with_one_or_no_common_seed():
    one = paired_difference({1: 3.0, 2: None}, {1: 1.0, 2: 5.0})
    assert one["mean"] == 2.0 and one["ci"] is None and one["sd"] is None
    assert paired_difference({1: 1.0}, {2: 1.0}) is None
    with pytest.raises(ValueError, match="df=0"):
        student_t_cdf(1.0, 0)
