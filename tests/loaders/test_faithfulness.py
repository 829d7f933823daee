"""Faithfulness of the loaders' augmentations to the anchors' pipeline (issue 5, "Faithfulness"; anchors §1.4).

The reference is the anchors' torchvision-on-PIL view, restated per image in `pil_reference.py` (numpy-seeded).
The comparisons are statistical, on the first 512 CIFAR-10 test images, each augmented PASSES = 4 times by each
implementation (2048 views a side). The op formulas and the crop-parameter sampling are checked against numpy
elsewhere (test_gpu_aug.py); here whole outputs are compared as distributions.

Per-view statistics, against the view's own (full, un-augmented) input image, in [0, 1] units:
  shift[c]  = mean(out_c) - mean(in_c)          per channel: brightness/contrast/hue move it
  ratio[c]  = std(out_c) / std(in_c)            per channel: brightness x contrast scale it, saturation/hue reshape it
  dtheta    = change of the hue angle of the image's mean colour in the opponent plane (R - (G+B)/2,
              sqrt(3)/2 (G - B)), degrees, for images whose mean colour is chromatic (in > 0.05, out > 0.02):
              brightness, contrast and saturation leave it (they blend towards achromatic references), a hue
              rotation moves it by about the rotation
  luma      = mean(luma_out) - mean(luma_in)    (ITU-R 601 weights): saturation keeps it exactly, an HSV hue
              rotation changes it (a luma-preserving YIQ rotation would not)

Distributions are compared with the two-sample KS statistic at ALPHA = 1e-4 per comparison (asymptotic critical
value, 2048 vs 2048: 0.070). PIL works in uint8: each enhance op truncates (`(UINT8)temp`, ~ -0.45/255 on average)
and its hue is quantized to 1/255 turn. The gpu's float outputs are truncated to uint8 once (`pil_rounding`, PIL's
last op); the truncations of earlier ops remain. A statistic with a sharp peak (a small hue rotation leaves the
red mean of a red-dominated image exactly unchanged) turns such sub-level offsets into large KS values, so the KS
statistic is taken with a horizontal slack (Lévy style: values closer than the slack are not told apart): 2/255 for
shifts and luma, 0.02 for std ratios, 2 degrees for dtheta; for saturation alone (one truncation in PIL, emulated
exactly) 0.5/255, 0.005 and 0.25/255. Measured margins (KS / critical): jitter <= 0.029 / 0.070, whole view
<= 0.020 / 0.070, DALI <= 0.027 / 0.070. Fractions (jitter applied, grayscale, solarized-or-dark) are compared
with a two-proportion z-test, |z| <= 4.5, and the gpu's against the nominal probability within 5 sd.

Sensitivity, checked by monkeypatching gpu_aug locally and watching these tests fail: hue skipped or halved
(jitter[anchors], jitter[hue], whole view), hue as a luma-preserving YIQ rotation (jitter[hue]: luma, shift,
ratio); saturation blending towards the mean of the channels or Rec. 709 luma instead of ITU-R 601
(jitter[saturation]: luma); jitter probability 0.5 instead of 0.8 (jitter probability); grayscale or solarize
probability 0.1 instead of 0.2 (whole view). Not caught: a fixed instead of random order of the four jitter ops
(its effect on these statistics is below their resolution).
"""
from __future__ import annotations

import dataclasses
import gc
import math

import numpy as np
import pytest
import torch

from loaders import ViewConfig, cifar_views, make_loader

from . import pil_reference as R
from .utils import FakeDataset, assert_binomial, ks_critical

# numba's dispatcher finalizer raises a harmless KeyError when FFCV's pipelines are collected (as in test_ffcv.py)
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

N, PASSES = 512, 4
ALPHA = 1e-4
SLACK = {"shift": 2 / 255, "ratio": 0.02, "dtheta": 2.0, "luma": 2 / 255}
Z_MAX = 4.5
LUMA = np.array([0.299, 0.587, 0.114])

# the colour jitter alone, on the whole image (no crop: scale = ratio = 1 keeps it), no flip / grayscale
JITTER_ONLY = dict(size=32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, grayscale_prob=0.0)
# anchors' strengths (0.4, 0.4, 0.2, 0.1), and one op alone at a larger strength (differences show more):
# case -> (strengths, statistics compared, slack overrides)
JITTER_CASES = {
    "anchors": (dict(), ("shift", "ratio", "dtheta", "luma"), {}),
    # one blend, one truncation in PIL (emulated by `pil_rounding`), so the slack can be a fraction of a level;
    # saturation alone keeps dtheta at 0 (a point mass: nothing to compare)
    "saturation": (dict(brightness=0.0, contrast=0.0, saturation=0.8, hue=0.0), ("shift", "ratio", "luma"),
                   {"shift": 0.5 / 255, "ratio": 0.005, "luma": 0.25 / 255}),
    "hue": (dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.3), ("shift", "ratio", "dtheta", "luma"), {}),
}


# ---------------------------------------------------------------- data

@pytest.fixture(scope="module")
def cifar(data_root):
    """(ImageDataset kept as encoded bytes, its first N images decoded by PIL as uint8 (N, 32, 32, 3))."""
    from fastpnr.data import load_dataset

    ds = load_dataset("cifar10", "test", data_root, decode=False)
    return ds, np.stack([ds.image(i) for i in range(N)])


def fake(images, cfg, labels=None) -> FakeDataset:
    """A decoded in-memory dataset of `images` (what the "gpu" loader and `write_beton` take)."""
    labels = np.zeros(len(images), np.int64) if labels is None else np.asarray(labels[:len(images)], np.int64)
    return FakeDataset(images=images, labels=labels, mean=cfg.mean, std=cfg.std)


def unit(views, cfg) -> np.ndarray:
    """The loader's normalized (B, 3, S, S) views, concatenated, back in [0, 1]: float64 (B*V, S, S, 3)."""
    y = torch.cat([v.cpu() for v in views])
    y = y * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)
    return y.permute(0, 2, 3, 1).double().numpy()


def gpu_views(images, cfg, passes=PASSES, seed=0) -> np.ndarray:
    """`passes` views of every image from the "gpu" loader (one batch, images in order), pass-major."""
    ld = make_loader("gpu", fake(images, cfg), batch_size=len(images), num_views=passes, device="cpu", seed=seed,
                     shuffle=False, view_configs=cfg)
    views, _, idx = next(iter(ld))
    assert idx.tolist() == list(range(len(images)))
    return unit(views, cfg)


def pil_views(images, cfg, passes=PASSES, seed=1) -> np.ndarray:
    return R.augment_many(images, cfg, passes, seed).astype(np.float64) / 255


def pil_rounding(y: np.ndarray) -> np.ndarray:
    """Float outputs truncated to uint8 levels, as PIL's last blend does (`(UINT8)temp`), back in [0, 1]."""
    return np.floor(y * 255 + 1e-3) / 255


def inputs(images, passes=PASSES) -> np.ndarray:
    return np.tile(images, (passes, 1, 1, 1)).astype(np.float64) / 255


# ---------------------------------------------------------------- statistics

def _hue_angle(m):
    a, b = m[:, 0] - (m[:, 1] + m[:, 2]) / 2, math.sqrt(3) / 2 * (m[:, 1] - m[:, 2])
    return np.arctan2(b, a), np.hypot(a, b)


def color_stats(x: np.ndarray, y: np.ndarray) -> dict:
    """Per-view statistics of outputs y against inputs x, both float (B, H, W, 3) in [0, 1] (module docstring)."""
    mx, my = x.mean(axis=(1, 2)), y.mean(axis=(1, 2))
    tx, cx = _hue_angle(mx)
    ty, cy = _hue_angle(my)
    chromatic = (cx > 0.05) & (cy > 0.02)
    return {
        "shift": my - mx,
        "ratio": y.std(axis=(1, 2)) / np.maximum(x.std(axis=(1, 2)), 1e-3),
        "dtheta": np.degrees((ty - tx + np.pi) % (2 * np.pi) - np.pi)[chromatic],
        "luma": (y @ LUMA).mean(axis=(1, 2)) - (x @ LUMA).mean(axis=(1, 2)),
    }


def ks_distance(a, b, slack: float = 0.0) -> float:
    """max over t of F_a(t) - F_b(t + slack) and F_b(t) - F_a(t + slack): the two-sample KS statistic at slack 0;
    with slack > 0, values closer than `slack` are not told apart (a Lévy-style band around each CDF)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))

    def one_sided(p, q):
        f_p = np.searchsorted(p, p, side="right") / len(p)
        return np.max(f_p - np.searchsorted(q, p + slack, side="right") / len(q))

    return float(max(one_sided(a, b), one_sided(b, a), 0.0))


def distribution_gaps(ours: dict, ref: dict, keys, slack=None, alpha: float = ALPHA) -> list[str]:
    """One line per statistic (per channel) whose KS distance (with its slack) exceeds the critical value."""
    slack = {**SLACK, **(slack or {})}
    bad = []
    for key in keys:
        a, b = ours[key], ref[key]
        columns = [(f"{key}[{c}]", a[:, c], b[:, c]) for c in range(3)] if a.ndim == 2 else [(key, a, b)]
        for name, u, v in columns:
            d, crit = ks_distance(u, v, slack[key]), ks_critical(len(u), len(v), alpha)
            if d > crit:
                bad.append(f"{name}: KS {d:.3f} > {crit:.3f} (slack {slack[key]:.3g}); mean {u.mean():+.4f} vs "
                           f"{v.mean():+.4f}, sd {u.std():.4f} vs {v.std():.4f}")
    return bad


def moment_gaps(ours: np.ndarray, ref: np.ndarray, name: str, bias: float, sd_rel: float) -> list[str]:
    """Means within 4 standard errors + `bias`; standard deviations within `sd_rel` (relative), per column."""
    bad = []
    for c in range(ours.shape[1]):
        u, v = ours[:, c], ref[:, c]
        se = math.sqrt(u.var() / len(u) + v.var() / len(v))
        if abs(u.mean() - v.mean()) > 4 * se + bias:
            bad.append(f"{name}[{c}] mean {u.mean():+.4f} vs {v.mean():+.4f} (tolerance {4 * se + bias:.4f})")
        if abs(u.std() / v.std() - 1) > sd_rel:
            bad.append(f"{name}[{c}] sd {u.std():.4f} vs {v.std():.4f} (tolerance {sd_rel:.0%})")
    return bad


def assert_same_fraction(k1: int, n1: int, k2: int, n2: int, what: str) -> None:
    """Two-proportion z-test: |z| <= Z_MAX."""
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(max(p * (1 - p), 1e-12) * (1 / n1 + 1 / n2))
    z = (k1 / n1 - k2 / n2) / se
    assert abs(z) <= Z_MAX, f"{what}: {k1}/{n1} = {k1 / n1:.4f} vs reference {k2}/{n2} = {k2 / n2:.4f} (z = {z:+.1f})"


def changed(x, y) -> np.ndarray:
    return np.abs(y - x).max(axis=(1, 2, 3)) > 0.5 / 255


def is_gray(y) -> np.ndarray:
    return (y.max(axis=-1) - y.min(axis=-1)).max(axis=(1, 2)) < 1e-4


def looks_solarized(y) -> np.ndarray:
    """Solarizing at 128 leaves no value >= 128/255 (x >= 0.5 becomes 1 - x <= 0.5); dark images look the same,
    so this counts solarized + dark images: a fraction both implementations must share."""
    return y.max(axis=(1, 2, 3)) <= 0.5 + 0.25 / 255


# ---------------------------------------------------------------- 1. colour jitter, gpu vs PIL

@pytest.mark.parametrize("case", list(JITTER_CASES))
def test_color_jitter_distribution_gpu_vs_pil(cifar, case):
    """Jitter alone with p = 1 (whole image, no flip/grayscale): per-view shift/ratio/dtheta/luma distributions.

    Anchors' case: also the per-channel mean shift's mean within 4 SE + 2/255 (PIL's truncation bias) and its sd
    within 10%. Saturation alone keeps luma (a blend with the ITU-R 601 luma); the luma statistic is what moves when
    the grey weights are wrong. Hue alone: dtheta pins the rotation's size, luma its HSV nature.
    """
    _, images = cifar
    strengths, keys, slack = JITTER_CASES[case]
    cfg = ViewConfig(jitter_prob=1.0, **JITTER_ONLY, **strengths)
    x = inputs(images)
    ours, ref = color_stats(x, pil_rounding(gpu_views(images, cfg))), color_stats(x, pil_views(images, cfg))
    bad = distribution_gaps(ours, ref, keys, slack)
    if case == "anchors":
        bad += moment_gaps(ours["shift"], ref["shift"], "shift", bias=2 / 255, sd_rel=0.1)
    assert not bad, "gpu jitter differs from the PIL reference:\n" + "\n".join(bad)


def test_color_jitter_probability_gpu_vs_pil(cifar):
    """RandomApply(ColorJitter, p=0.8): the fraction of changed views, against each other and against 0.8."""
    _, images = cifar
    cfg = ViewConfig(**JITTER_ONLY)  # jitter_prob 0.8, the anchors' strengths
    x = inputs(images, passes=2)
    k_gpu = int(changed(x, gpu_views(images, cfg, passes=2)).sum())
    k_ref = int(changed(x, pil_views(images, cfg, passes=2)).sum())
    n = len(x)
    assert_binomial(k_ref, n, cfg.jitter_prob)  # the reference itself draws with p
    assert_binomial(k_gpu, n, cfg.jitter_prob)
    assert_same_fraction(k_gpu, n, k_ref, n, "views changed by jitter p=0.8")


# ---------------------------------------------------------------- 2. the anchors' whole view, gpu vs PIL

def test_whole_view_gpu_vs_pil(cifar):
    """cifar_views()[1] (crop 0.08-1 bicubic, jitter p 0.8, grayscale 0.2, solarize 0.2, flip 0.5), gpu vs PIL.

    Against each view's full input image: shift, ratio, dtheta (views that are not grey) agree in distribution
    (the crop dominates their spread; bicubic a = -0.75 vs PIL's -0.5 is inside the tolerances); the grey fraction
    (three equal channels) and the "no value >= 128" fraction (solarized or dark, see `looks_solarized`) agree.
    The detector is calibrated first: solarize p = 1 alone marks every view of both implementations.
    """
    _, images = cifar
    cfg = cifar_views(32)[1]
    assert (cfg.solarize_prob, cfg.grayscale_prob, cfg.jitter_prob, cfg.blur_prob) == (0.2, 0.2, 0.8, 0.0)
    sol = dataclasses.replace(ViewConfig.eval(32), solarize_prob=1.0)
    assert looks_solarized(gpu_views(images, sol, passes=1)).all()
    assert looks_solarized(pil_views(images, sol, passes=1)).all()

    x = inputs(images)
    gpu, ref = pil_rounding(gpu_views(images, cfg)), pil_views(images, cfg)
    n = len(x)
    g_gray, r_gray = is_gray(gpu), is_gray(ref)
    native = float(is_gray(x).mean())  # CIFAR has a few grey images already
    for k in (int(g_gray.sum()), int(r_gray.sum())):
        assert_binomial(k, n, cfg.grayscale_prob + (1 - cfg.grayscale_prob) * native)
    assert_same_fraction(int(g_gray.sum()), n, int(r_gray.sum()), n, "grey views")
    assert_same_fraction(int(looks_solarized(gpu).sum()), n, int(looks_solarized(ref).sum()), n,
                         "views with no value >= 128 (solarized or dark)")
    ours, theirs = color_stats(x, gpu), color_stats(x, ref)
    ours["dtheta"], theirs["dtheta"] = (color_stats(x[~g], y[~g])["dtheta"] for g, y in ((g_gray, gpu), (r_gray, ref)))
    bad = distribution_gaps(ours, theirs, ("shift", "ratio", "dtheta"))
    assert not bad, "gpu view differs from the PIL reference:\n" + "\n".join(bad)


# ---------------------------------------------------------------- 3. DALI (CPU pipeline) vs PIL

def dali_views(ds, cfg, passes=PASSES, seed=0, epoch=0) -> np.ndarray:
    ld = make_loader("dali", ds, batch_size=N, num_views=passes, device="cpu", seed=seed, shuffle=False,
                     view_configs=cfg, subset=np.arange(N), num_threads=2)
    ld.set_epoch(epoch)
    views, _, idx = next(iter(ld))
    assert idx.tolist() == list(range(N))
    return unit(views, cfg)


def test_dali_color_ops_vs_pil(cifar):
    """The DALI CPU pipeline with crop scale = ratio = 1 (whole image, decoded by libjpeg) and no flip, so only the
    colour ops differ from the PIL reference.

    DALI's color_twist is one fused linear colour transform: a fixed order (brightness, contrast, saturation, hue,
    not a random permutation), contrast stretched around mid-grey 0.5 (not the image's mean luma) and hue as a
    luma-preserving linear rotation (YIQ; measured with hue alone: luma shift sd 0.002 vs PIL's HSV 0.038).
    Compared, and why it should agree:
    - ratio[c] (std ratio): brightness x contrast scale every channel's std alike in both; KS, slack 0.02.
    - shift[c]: KS with slack 2/255 at the anchors' strengths (the mid-grey pivot adds (c - 1)(0.5 - mean_luma) to
      the mean, c in [0.6, 1.4]: small next to brightness), and the mean shift's mean within 4 SE + 2/255 and its
      sd within 15% (the pivot widens it: measured +6% on R and B).
    - dtheta: both rotate the mean colour by ~U[-36, 36] degrees; sd within 10% (KS is not asserted: YIQ and HSV
      angles are different parametrizations of the colour circle).
    - fractions with the whole view 2 (jitter 0.8, grayscale 0.2, solarize 0.2): changed-by-jitter (jitter alone,
      p 0.8), grey, and solarized-or-dark, each two-proportion against the reference.
    Not compared (documented differences): the luma statistic (YIQ hue keeps it), a contrast-only mean shift (pivot),
    per-channel statistics of a hue-only jitter (YIQ vs HSV).
    """
    pytest.importorskip("nvidia.dali")
    ds, images = cifar
    x = inputs(images)
    plain = ViewConfig.eval(32)
    np.testing.assert_allclose(dali_views(ds, plain, passes=1), x[:N], atol=1e-4)  # same decode, no colour op

    cfg = ViewConfig(jitter_prob=1.0, **JITTER_ONLY)
    ours, ref = color_stats(x, dali_views(ds, cfg)), color_stats(x, pil_views(images, cfg))
    bad = distribution_gaps(ours, ref, ("shift", "ratio"))
    bad += moment_gaps(ours["shift"], ref["shift"], "shift", bias=2 / 255, sd_rel=0.15)
    bad += moment_gaps(ours["dtheta"][:, None], ref["dtheta"][:, None], "dtheta", bias=math.inf, sd_rel=0.1)
    assert not bad, "DALI colour ops differ from the PIL reference:\n" + "\n".join(bad)

    n = len(x)
    p08 = ViewConfig(**JITTER_ONLY)
    assert_same_fraction(int(changed(x, dali_views(ds, p08, seed=1)).sum()), n,
                         int(changed(x, pil_views(images, p08)).sum()), n, "views changed by jitter p=0.8")
    view = dataclasses.replace(cifar_views(32)[1], crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0)
    dali, ref = dali_views(ds, view, seed=2), pil_views(images, view)
    assert_same_fraction(int(is_gray(dali).sum()), n, int(is_gray(ref).sum()), n, "grey views")
    assert_same_fraction(int(looks_solarized(dali).sum()), n, int(looks_solarized(ref).sum()), n,
                         "views with no value >= 128 (solarized or dark)")


# ---------------------------------------------------------------- 4, 5. FFCV = gpu, and fixed seeds

@pytest.fixture(scope="module")
def beton(cifar, tmp_path_factory):
    pytest.importorskip("ffcv")
    from loaders.ffcv_ops import write_beton

    ds, images = cifar
    path = write_beton(fake(images, ViewConfig(size=32), ds.labels), tmp_path_factory.mktemp("faith") / "c10.beton",
                       num_workers=1)
    yield path
    gc.collect()  # FFCV's dead numba pipelines, collected while the module's filter applies


def first_batch(kind, source, seed, views, epoch=0, **kw):
    threads = torch.get_num_threads()
    try:
        ld = make_loader(kind, source, batch_size=128, num_views=len(views), device="cpu", seed=seed,
                         view_configs=views, **kw)
        ld.set_epoch(epoch)
        vs, labels, idx = next(iter(ld))
        return [v.contiguous() for v in vs], labels, idx
    finally:
        torch.set_num_threads(threads)  # FFCV sets torch's thread count to its num_workers


@pytest.mark.slow
def test_ffcv_device_crop_equals_gpu_loader(cifar, beton):
    """crop="device" decodes the raw stored pixels and runs the same `augment_batch` on a generator seeded from
    (seed, epoch, AUGMENTATION), as the gpu loader does: with the same order (shuffle=False: both sequential) the
    batches are equal bit for bit on CPU (FFCV hands over a channels_last batch, the gpu loader an NCHW one).
    With shuffle=True the orders come from different generators (FFCV's numpy Random vs torch.randperm), so only
    the set of indices and the per-(seed, epoch) determinism are shared (test_ffcv.py, test_gpu_resident.py)."""
    ds, images = cifar
    views = cifar_views(32)
    for epoch in (0, 1):
        f_views, f_labels, f_idx = first_batch("ffcv", str(beton), 3, views, epoch, shuffle=False, num_workers=1)
        g_views, g_labels, g_idx = first_batch("gpu", fake(images, views[0], ds.labels), 3, views, epoch,
                                               shuffle=False)
        assert torch.equal(f_idx, g_idx) and torch.equal(f_labels, g_labels)
        assert f_idx.tolist() == list(range(len(f_idx)))
        assert all(torch.equal(f, g) for f, g in zip(f_views, g_views)), f"epoch {epoch}: FFCV's views differ"


@pytest.mark.parametrize("kind", ["gpu", pytest.param("ffcv", marks=pytest.mark.slow), "dali"])
def test_fixed_seed_reproduces_the_batch(cifar, kind, request):
    """Two fresh loaders with the same (seed, epoch) give the same first batch (order and both anchors' views,
    bit for bit); another seed gives another batch. Real CIFAR images, shuffled."""
    ds, images = cifar
    views = cifar_views(32)
    if kind == "gpu":
        source, kw = fake(images, views[0], ds.labels), {}
    elif kind == "ffcv":
        source, kw = str(request.getfixturevalue("beton")), {"num_workers": 1}
    else:
        pytest.importorskip("nvidia.dali")
        source, kw = ds, {"subset": np.arange(N), "num_threads": 2}
    a = first_batch(kind, source, 7, views, epoch=2, **kw)
    b = first_batch(kind, source, 7, views, epoch=2, **kw)
    c = first_batch(kind, source, 8, views, epoch=2, **kw)
    assert torch.equal(a[2], b[2]) and torch.equal(a[1], b[1])
    assert all(torch.equal(u, v) for u, v in zip(a[0], b[0]))
    assert not torch.equal(a[2], c[2]) and not torch.equal(a[0][0], c[0][0])
