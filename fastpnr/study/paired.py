"""Paired differences between two strategies over the same seeds: mean and Student-t confidence interval.

A study's cells of two strategies share their seeds (same task split, same initial weights, same data order), so
the per-seed difference d_s = x_s - y_s removes the seed's own effect; the interval is
``mean(d) ± t_{1 - alpha/2, n - 1} * sd(d) / sqrt(n)`` (sd with n - 1).
"""
from __future__ import annotations

import math


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with integer ``df`` >= 1, by the finite series of Abramowitz & Stegun 26.7.3-4:
    with theta = atan(t / sqrt(df)), A = P(|T| <= |t|) is
    (2/pi) [theta + sin(theta) cos(theta) (1 + 2/3 cos^2 + ... + (2*4*..*(df-3))/(1*3*..*(df-2)) cos^(df-3))] for odd
    df (just 2 theta / pi for df = 1) and sin(theta) (1 + 1/2 cos^2 + ... + (1*3*..*(df-3))/(2*4*..*(df-2))
    cos^(df-2)) for even df."""
    if not (isinstance(df, int) and df >= 1):
        raise ValueError(f"df={df!r} is invalid; allowed: an integer >= 1")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:
        series, term = 0.0, 1.0
        if df > 1:
            series = term
            for k in range(1, (df - 3) // 2 + 1):  # terms cos^(2k), coefficient prod (2j)/(2j+1)
                term *= (2 * k) / (2 * k + 1) * c2
                series += term
            a = 2 / math.pi * (theta + s * math.cos(theta) * series)
        else:
            a = 2 / math.pi * theta
    else:
        series, term = 1.0, 1.0
        for k in range(1, (df - 2) // 2 + 1):  # coefficient prod (2j-1)/(2j)
            term *= (2 * k - 1) / (2 * k) * c2
            series += term
        a = s * series
    return 0.5 + math.copysign(a / 2, t)


def student_t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on ``student_t_cdf`` to 1e-12."""
    if not 0 < p < 1:
        raise ValueError(f"p={p!r} is invalid; allowed: 0 < p < 1")
    lo, hi = -1.0, 1.0
    while student_t_cdf(lo, df) > p:
        lo *= 2
    while student_t_cdf(hi, df) < p:
        hi *= 2
    while hi - lo > 1e-12 * max(1.0, abs(hi)):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired_difference(ours: dict, baseline: dict, level: float = 0.95) -> dict | None:
    """Per-seed difference ours[s] - baseline[s] over the seeds both have (None values skipped), with
    ``{"by_seed": {seed: d}, "n", "mean", "sd", "ci": (lo, hi) or None (n < 2), "t": quantile}``; None without a
    common seed."""
    seeds = sorted(s for s in ours if s in baseline and ours[s] is not None and baseline[s] is not None
                   and not math.isnan(ours[s]) and not math.isnan(baseline[s]))
    if not seeds:
        return None
    d = {s: float(ours[s]) - float(baseline[s]) for s in seeds}
    n = len(d)
    mean = sum(d.values()) / n
    if n < 2:
        return {"by_seed": d, "n": n, "mean": mean, "sd": None, "ci": None, "t": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in d.values()) / (n - 1))
    t = student_t_quantile(1 - (1 - level) / 2, n - 1)
    half = t * sd / math.sqrt(n)
    return {"by_seed": d, "n": n, "mean": mean, "sd": sd, "ci": (mean - half, mean + half), "t": t}
