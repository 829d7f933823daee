"""loaders/gpu_aug.py against independent restatements: numpy formulas, colorsys, PIL, torchvision's sampling rule."""
import colorsys

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from loaders import gpu_aug as A
from loaders.config import ViewConfig

from .pil_reference import crop_params
from .utils import assert_binomial, cifar_images, ks_critical, ks_statistic, to_float_batch

TOL = {"float": 1e-5, "hue": 2e-5, "uint8": 1.0 / 255 + 1e-6, "pil_enhance": 2.0 / 255}
GRAY = np.array([0.2989, 0.587, 0.114])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand_images(b=7, h=9, w=11, seed=0):
    return torch.rand((b, 3, h, w), generator=gen(seed))


def np_img(x):  # (B,3,H,W) tensor → (B,H,W,3) float64
    return x.permute(0, 2, 3, 1).double().numpy()


# ---------------------------------------------------------------- colour, restated in numpy

def test_grayscale_weights():
    x = rand_images()
    ref = np_img(x) @ GRAY
    np.testing.assert_allclose(A.rgb_to_grayscale(x)[:, 0].numpy(), ref, atol=TOL["float"])
    y = A.grayscale_batch(x, 1.0, gen())
    np.testing.assert_allclose(np_img(y), np.repeat(ref[..., None], 3, -1), atol=TOL["float"])
    assert torch.equal(A.grayscale_batch(x, 0.0, gen()), x)


def np_brightness(img, f):
    return np.clip(f * img, 0, 1)


def np_contrast(img, f):
    return np.clip(f * img + (1 - f) * (img @ GRAY).mean(), 0, 1)


def np_saturation(img, f):
    return np.clip(f * img + (1 - f) * (img @ GRAY)[..., None], 0, 1)


def np_hue(img, shift):
    out = np.empty_like(img)
    for idx in np.ndindex(img.shape[:-1]):
        h, s, v = colorsys.rgb_to_hsv(*img[idx])
        out[idx] = colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)
    return out


NP_OPS = [np_brightness, np_contrast, np_saturation, np_hue]


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_blend_ops_match_torchvision_formulas(name):
    x = rand_images()
    f = torch.tensor([0.0, 0.3, 0.6, 1.0, 1.2, 1.4, 2.5])
    y = getattr(A, f"adjust_{name}_batch")(x, f)
    np_op = {"brightness": np_brightness, "contrast": np_contrast, "saturation": np_saturation}[name]
    ref = np.stack([np_op(img, float(fi)) for img, fi in zip(np_img(x), f)])
    np.testing.assert_allclose(np_img(y), ref, atol=TOL["float"])


def test_hue_matches_colorsys():
    x = rand_images(b=5, h=6, w=5)
    x[0, :, 0, 0] = 0.5  # a gray pixel (chroma 0)
    x[1, :, 0, 0] = torch.tensor([0.7, 0.7, 0.2])  # ties between max channels
    shift = torch.tensor([-0.5, -0.1, 0.0, 0.25, 0.5])
    ref = np.stack([np_hue(img, float(s)) for img, s in zip(np_img(x), shift)])
    np.testing.assert_allclose(np_img(A.adjust_hue_batch(x, shift)), ref, atol=TOL["hue"])


def test_hue_identity_red_to_cyan_and_round_trip():
    x = rand_images()
    torch.testing.assert_close(A.adjust_hue_batch(x, torch.zeros(7)), x, atol=TOL["hue"], rtol=0)
    red = torch.zeros(2, 3, 1, 1)
    red[:, 0] = 1.0
    cyan = A.adjust_hue_batch(red, torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(cyan[:, :, 0, 0], torch.tensor([[0.0, 1.0, 1.0]] * 2), atol=TOL["hue"], rtol=0)
    s = torch.linspace(-0.5, 0.5, 7)
    back = A.adjust_hue_batch(A.adjust_hue_batch(x, s), -s)
    torch.testing.assert_close(back, x, atol=TOL["hue"], rtol=0)


def replay_jitter_draws(b, strengths, p, seed):
    """The draws color_jitter_batch makes, in its order: factors (b,4), coin (b,), order (b,4)."""
    g = gen(seed)
    f = A.jitter_factors(b, *strengths, g, "cpu").double().numpy()
    coin = (torch.rand(b, generator=g) < p).numpy()
    order = torch.rand((b, 4), generator=g).argsort(dim=1).numpy()
    return f, coin, order


@pytest.mark.parametrize("random_order", [True, False])
@pytest.mark.parametrize("strengths", [(0.4, 0.4, 0.2, 0.1), (0.8, 0.0, 0.8, 0.2), (0.4, 0.4, 0.4, 0.0)])
def test_color_jitter_is_per_sample_torchvision_jitter(random_order, strengths):
    """Vectorized slots == a per-sample loop applying the ops in each sample's own order (torchvision ColorJitter)."""
    b, p, seed = 16, 0.7, 3
    x = rand_images(b=b, h=5, w=4, seed=1)
    y = A.color_jitter_batch(x, *strengths, p, gen(seed), random_order=random_order)
    f, coin, order = replay_jitter_draws(b, strengths, p, seed)
    ref = []
    for i, img in enumerate(np_img(x)):
        if coin[i]:
            for op in (order[i] if random_order else range(4)):
                if strengths[op] != 0:
                    img = NP_OPS[op](img, f[i, op])
        ref.append(img)
    np.testing.assert_allclose(np_img(y), np.stack(ref), atol=TOL["hue"])


def test_jitter_factor_ranges():
    f = A.jitter_factors(20000, 0.4, 1.5, 0.2, 0.1, gen(), "cpu")
    lo, hi = f.amin(0), f.amax(0)
    torch.testing.assert_close(lo, torch.tensor([0.6, 0.0, 0.8, -0.1]), atol=1e-3, rtol=0)
    torch.testing.assert_close(hi, torch.tensor([1.4, 2.5, 1.2, 0.1]), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- blur, solarize, normalize

def np_gaussian_blur(img, sigma, k):
    half = k // 2
    t = np.arange(-half, half + 1)
    kern = np.exp(-0.5 * (t / sigma) ** 2)
    kern /= kern.sum()
    pad = np.pad(img, ((half, half), (half, half), (0, 0)), mode="reflect")
    rows = sum(kern[d] * pad[:, d:d + img.shape[1]] for d in range(k))
    return sum(kern[d] * rows[d:d + img.shape[0]] for d in range(k))


def test_gaussian_blur_matches_numpy_per_sample_sigma():
    b, seed, sigma = 6, 5, (0.1, 2.0)
    x = rand_images(b=b, h=15, w=17)
    y = A.gaussian_blur_batch(x, sigma, 0.5, gen(seed))
    g = gen(seed)
    s = (sigma[0] + (sigma[1] - sigma[0]) * torch.rand(b, generator=g)).double().numpy()
    coin = (torch.rand(b, generator=g) < 0.5).numpy()
    k = A.gaussian_kernel_size(sigma[1])
    assert k == 13
    ref = np.stack([np_gaussian_blur(img, s[i], k) if coin[i] else img for i, img in enumerate(np_img(x))])
    np.testing.assert_allclose(np_img(y), ref, atol=TOL["float"])


def test_gaussian_blur_keeps_constants_and_small_images():
    x = torch.full((3, 3, 5, 5), 0.3)  # kernel 13 > image: the pad is capped
    torch.testing.assert_close(A.gaussian_blur_batch(x, (2.0, 2.0), 1.0, gen()), x, atol=TOL["float"], rtol=0)


def test_solarize_threshold():
    x = torch.tensor([0.0, 0.2, 0.4999, 0.5, 0.7, 1.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    y = A.solarize_batch(x, 1.0, gen())
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.0, 0.2, 0.4999, 0.5, 0.3, 0.0]))
    assert torch.equal(A.solarize_batch(x, 0.0, gen()), x)


def test_normalize():
    x = rand_images()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    ref = (np_img(x) - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(np_img(A.normalize_batch(x, mean, std)), ref, atol=TOL["float"])
    # the per-channel constants are uploaded once and reused (no host-to-device copy per batch), per dtype
    assert A._constant(list(mean), x) is A._constant(mean, x) and A._constant(mean, x).tolist() == pytest.approx(mean)
    assert A._constant(mean, x.double()).dtype == torch.float64


# ---------------------------------------------------------------- faithfulness to PIL on real CIFAR images

@pytest.fixture(scope="module")
def cifar():
    imgs = cifar_images(512)
    if imgs is None:
        pytest.skip("CIFAR-10 test archive absent")
    return imgs


def test_pil_faithfulness_on_cifar(cifar):
    imgs = cifar[:64]
    x = to_float_batch(imgs)
    pil = [Image.fromarray(im) for im in imgs]

    def check(ours, theirs, tol):
        diff = np.abs(np_img(ours) - np.stack([np.asarray(t) for t in theirs]).astype(np.float64) / 255)
        assert diff.max() <= tol, diff.max()

    check(A.solarize_batch(x, 1.0, gen()), [ImageOps.solarize(im, threshold=128) for im in pil], TOL["float"])
    check(A.grayscale_batch(x, 1.0, gen()), [im.convert("L").convert("RGB") for im in pil], TOL["uint8"])
    f = torch.linspace(0.6, 1.4, 64)
    for name, enh in [("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                      ("saturation", ImageEnhance.Color)]:
        ours = getattr(A, f"adjust_{name}_batch")(x, f)
        check(ours, [enh(im).enhance(float(fi)) for im, fi in zip(pil, f)], TOL["pil_enhance"])


def test_crop_geometry_matches_pil_resize_box(cifar):
    """Bilinear crop-resize through the affine grid == PIL's resize(box=crop) to uint8 rounding."""
    imgs = cifar[:64]
    x = to_float_batch(imgs)
    top, left, h, w = A.sample_crop_params(64, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), gen(2))
    theta = A.crop_flip_theta(top, left, h, w, torch.zeros(64, dtype=torch.bool), 32, 32)
    grid = torch.nn.functional.affine_grid(theta, [64, 3, 32, 32], align_corners=False)
    ours = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    ref = np.stack([np.asarray(Image.fromarray(im).resize(
        (32, 32), Image.BILINEAR, box=(int(l), int(t), int(l + ww), int(t + hh))))
        for im, t, l, hh, ww in zip(imgs, top, left, h, w)]).astype(np.float64) / 255
    assert np.abs(np_img(ours) - ref).max() <= TOL["uint8"]


# ---------------------------------------------------------------- crop and flip

@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_full_crop_is_identity_and_flip_is_mirror(interpolation):
    x = rand_images(b=5, h=12, w=12)
    same = A.random_resized_crop_flip_batch(x, 12, (1.0, 1.0), (1.0, 1.0), 0.0, gen(), interpolation)
    torch.testing.assert_close(same, x, atol=TOL["float"], rtol=0)
    mirror = A.random_resized_crop_flip_batch(x, 12, (1.0, 1.0), (1.0, 1.0), 1.0, gen(), interpolation)
    torch.testing.assert_close(mirror, x.flip(-1), atol=TOL["float"], rtol=0)


def np_torchvision_crop_params(n, height, width, scale, ratio, rng):
    """torchvision RandomResizedCrop.get_params, restated per sample (the PIL reference's rule), as (n, 4)."""
    return np.array([crop_params(height, width, scale, ratio, rng) for _ in range(n)], dtype=np.float64)


@pytest.mark.parametrize("shape,scale,ratio", [((32, 32), (0.08, 1.0), (3 / 4, 4 / 3)),
                                               ((24, 40), (0.2, 1.0), (0.5, 2.0))])
def test_crop_sampling_matches_torchvision_rule(shape, scale, ratio):
    n = 20000
    height, width = shape
    top, left, h, w = (t.double().numpy() for t in A.sample_crop_params(n, height, width, scale, ratio, gen(7)))
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    ref = np_torchvision_crop_params(n, height, width, scale, ratio, np.random.default_rng(7))
    crit = ks_critical(n, n)
    stats = {"area": (h * w / (height * width), ref[:, 2] * ref[:, 3] / (height * width)),
             "log_aspect": (np.log(w / h), np.log(ref[:, 3] / ref[:, 2])),
             "rel_top": (top / (height - h + 1), ref[:, 0] / (height - ref[:, 2] + 1)),
             "rel_left": (left / (width - w + 1), ref[:, 1] / (width - ref[:, 3] + 1))}
    for name, (ours, theirs) in stats.items():
        assert ks_statistic(ours, theirs) < crit, name


def test_crop_fallback_is_centre_crop():
    # every attempt is too wide for a square image → torchvision's centre crop with aspect clipped to 3
    top, left, h, w = A.sample_crop_params(50, 32, 32, (0.9, 1.0), (3.0, 4.0), gen())
    assert set(zip(top.tolist(), left.tolist(), h.tolist(), w.tolist())) == {(10, 0, 11, 32)}


def test_flip_fraction():
    n, p = 4000, 0.3
    x = torch.rand((1, 3, 4, 4), generator=gen(1)).expand(n, 3, 4, 4)
    y = A.random_resized_crop_flip_batch(x, 4, (1.0, 1.0), (1.0, 1.0), p, gen(2), "bilinear")
    flipped = (y - x.flip(-1)).abs().amax(dim=(1, 2, 3)) < TOL["float"]
    kept = (y - x).abs().amax(dim=(1, 2, 3)) < TOL["float"]
    assert bool((flipped ^ kept).all())
    assert_binomial(int(flipped.sum()), n, p)
    assert_binomial(int(A.flip_batch(x, p, gen(3)).ne(x).any(dim=(1, 2, 3)).sum()), n, p)


# ---------------------------------------------------------------- the composed view

def unnormalize(y, cfg):
    return y * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)


def test_augment_batch_probabilities():
    n = 3000
    cfg = ViewConfig(size=8, jitter_prob=0.0, grayscale_prob=0.2, solarize_prob=0.3)
    x = torch.tensor([0.9, 0.7, 0.8]).view(1, 3, 1, 1).expand(n, 3, 8, 8)  # constant colour: crops keep it
    y = unnormalize(A.augment_batch(x, cfg, gen(4)), cfg)
    gray = (y.amax(dim=1) - y.amin(dim=1)).amax(dim=(1, 2)) < 1e-4
    solarized = y.amax(dim=(1, 2, 3)) < 0.5
    assert_binomial(int(gray.sum()), n, 0.2)
    assert_binomial(int(solarized.sum()), n, 0.3)
    assert_binomial(int((gray & solarized).sum()), n, 0.06)  # independent coins


def test_augment_batch_jitter_fraction():
    n, cfg = 3000, ViewConfig(size=8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, grayscale_prob=0.0)
    x = torch.tensor([0.6, 0.4, 0.2]).view(1, 3, 1, 1).expand(n, 3, 8, 8)
    y = unnormalize(A.augment_batch(x, cfg, gen(5)), cfg)
    changed = (y - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert_binomial(int(changed.sum()), n, 0.8)


def test_augment_batch_shapes_determinism_and_eval():
    x = (torch.rand((6, 3, 20, 20), generator=gen()) * 255).to(torch.uint8)
    cfg = ViewConfig(size=12, blur_prob=0.5, solarize_prob=0.5)
    a, b = A.augment_batch(x, cfg, gen(9)), A.augment_batch(x, cfg, gen(9))
    assert a.shape == (6, 3, 12, 12) and a.dtype == torch.float32
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)
    assert not torch.equal(a, A.augment_batch(x, cfg, gen(10)))
    ev = ViewConfig.eval(20, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    torch.testing.assert_close(A.augment_batch(x, ev, gen()), (x.float() / 255 - 0.5) / 0.25)
    small = A.augment_batch(x, ViewConfig.eval(10), gen())  # resize, no randomness
    assert small.shape == (6, 3, 10, 10) and torch.equal(small, A.augment_batch(x, ViewConfig.eval(10), gen(1)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_batch_has_no_host_sync_on_cuda():
    x = torch.rand((64, 3, 32, 32), device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    cfg = ViewConfig(size=32, blur_prob=0.5, solarize_prob=0.2)
    A.augment_batch(x, cfg, g)  # warm-up (lazy init may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        A.augment_batch(x, cfg, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
