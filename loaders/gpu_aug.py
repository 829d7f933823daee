"""Whole-batch augmentation on float (B, 3, H, W) images in [0, 1], on any device.

Every op is a few tensor ops over the batch: no per-sample Python, no `.item()`, no boolean indexing, so nothing
waits on the device. Randomness comes only from the explicit `torch.Generator` `gen`, which must live on the data's
device; each op draws a fixed number of values per call, so a batch is a function of the generator's state.
Per-sample choices ("apply with probability p") are a `(B, 1, 1, 1)` coin and one `torch.where`.

Semantics follow torchvision's tensor functional ops (`torchvision.transforms.functional`), which the anchors' PIL
pipeline matches up to PIL's uint8 rounding (anchors-methods.md §1.4). Known differences from PIL:
- resampling is `F.grid_sample` (bicubic a = -0.75, PIL uses -0.5) with no antialiasing, so a crop much larger than
  the output (ImageNet-size downscaling) aliases where PIL would filter;
- Gaussian blur is an exact separable Gaussian (truncated at 3 sigma_max) with reflect padding (DALI's default
  border and torchvision's tensor GaussianBlur); PIL's `GaussianBlur(radius)` is an iterated box approximation with
  replicated edges.
Measured on 64 CIFAR-10 test images (uint8 scale): crop+resize vs PIL `resize(box=...)`, bilinear max |diff| 1.0,
bicubic mean 1.1 / 99th pct 6; blur vs PIL away from the border, mean 0.6 / max 3.7.
"""
from __future__ import annotations

import functools
import math
import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .config import ViewConfig

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale (ITU-R 601-2 luma)
SOLARIZE_THRESHOLD = 0.5  # = PIL ImageOps.solarize(threshold=128) on uint8-valued inputs: u >= 128 <=> u/255 >= 0.5


_ROWS = threading.local()  # (total rows, kept slice) while a rank augments its shard of a global batch


@contextmanager
def draw_rows(total: int, rows: slice | None):
    """Inside, every draw is made for the ``total`` rows of the global batch and only ``rows`` are kept: a rank
    that augments its shard uses exactly the per-sample parameters one process would give those rows, and the
    generator advances as it would in one process (every draw's first dimension is the batch). ``rows=None``: all."""
    _ROWS.value = None if rows is None else (total, rows)
    try:
        yield
    finally:
        _ROWS.value = None


def _rand(gen: torch.Generator, *shape: int, device) -> torch.Tensor:
    shard = getattr(_ROWS, "value", None)
    if shard is None:
        return torch.rand(shape, generator=gen, device=device)
    total, rows = shard
    return torch.rand((total, *shape[1:]), generator=gen, device=device)[rows]


def _coin(gen: torch.Generator, n: int, p: float, device) -> torch.Tensor:
    """(n, 1, 1, 1) bool, True with probability p."""
    return (_rand(gen, n, device=device) < p).view(n, 1, 1, 1)


# ---------------------------------------------------------------- crop and flip

def sample_crop_params(n: int, height: int, width: int, scale, ratio, gen: torch.Generator, device=None):
    """torchvision `RandomResizedCrop.get_params` for n images at once; returns int64 (top, left, h, w), each (n,).

    torchvision tries up to 10 times: area ~ U(scale) * H*W, log aspect ~ U(log ratio), w = round(sqrt(area*aspect)),
    h = round(sqrt(area/aspect)); the first attempt with 0 < w <= W and 0 < h <= H wins and its corner is uniform;
    if none fits, the centre crop with the aspect clipped to `ratio`. Here all 10 candidates are drawn at once and the
    first valid one is taken (same distribution; `round` is half-to-even in both Python and torch).
    """
    device = gen.device if device is None else device
    attempts = 10
    area = float(height * width)
    u = _rand(gen, n, attempts, device=device).double()
    v = _rand(gen, n, attempts, device=device).double()
    target = area * (scale[0] + (scale[1] - scale[0]) * u)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * v)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    arange = torch.arange(attempts, device=device).expand(n, attempts)
    first = torch.where(ok, arange, attempts).amin(dim=1, keepdim=True)  # index of the first valid attempt
    found = first.squeeze(1) < attempts
    first = first.clamp(max=attempts - 1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # torchvision's fallback: centre crop, aspect clipped to `ratio` (a constant: all images share H, W)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w0, h0 = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w0, h0 = int(round(height * max(ratio))), height
    else:
        w0, h0 = width, height
    w = torch.where(found, w, float(w0))
    h = torch.where(found, h, float(h0))
    corner = _rand(gen, n, 2, device=device).double()
    top = torch.where(found, torch.floor(corner[:, 0] * (height - h + 1)), float((height - h0) // 2))
    left = torch.where(found, torch.floor(corner[:, 1] * (width - w + 1)), float((width - w0) // 2))
    return top.long(), left.long(), h.long(), w.long()


def crop_flip_theta(top, left, h, w, flip, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) `F.affine_grid` matrices mapping the output square onto the crop box, mirrored where `flip`.

    With align_corners=False, output pixel k of S samples the input at x = left + (k + 0.5) * w / S (PIL's box
    resize convention), i.e. normalized x_in = (w / W) * x_out + (2 * left + w) / W - 1; a flip negates x_out.
    """
    top, left, h, w = (t.to(torch.float32) for t in (top, left, h, w))
    sx = torch.where(flip, -1.0, 1.0) * w / width
    theta = torch.zeros(top.shape[0], 2, 3, device=top.device)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    return theta


def random_resized_crop_flip_batch(x: torch.Tensor, size: int, scale, ratio, flip_prob: float, gen: torch.Generator,
                                   interpolation: str = "bicubic") -> torch.Tensor:
    """RandomResizedCrop(size, scale, ratio) then RandomHorizontalFlip(flip_prob), per sample: (B,3,H,W) → (B,3,S,S).

    One affine grid per sample (the flip folded in) and one `F.grid_sample`; border padding; the result is clamped to
    [0, 1] because bicubic overshoots (PIL clips to uint8 the same way).
    """
    b, _, height, width = x.shape
    top, left, h, w = sample_crop_params(b, height, width, scale, ratio, gen, device=x.device)
    flip = _rand(gen, b, device=x.device) < flip_prob
    theta = crop_flip_theta(top, left, h, w, flip, height, width)
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0) if interpolation == "bicubic" else out


def flip_batch(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each image with probability p."""
    return torch.where(_coin(gen, x.shape[0], p, x.device), x.flip(-1), x)


# ---------------------------------------------------------------- colour

def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) → (B,1,H,W) luma, torchvision's weights."""
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _per_sample(f, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(f, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)


def _blend(x, ref, factor):
    """torchvision `_blend`: clamp(factor * x + (1 - factor) * ref, 0, 1)."""
    return (factor * x + (1 - factor) * ref).clamp_(0.0, 1.0)


def adjust_brightness_batch(x, factor):
    """clamp(f * x, 0, 1), f per sample (B,)."""
    return _blend(x, 0.0, _per_sample(factor, x))


def adjust_contrast_batch(x, factor):
    """Blend with the image's mean luma (a per-image scalar), f per sample (B,)."""
    return _blend(x, rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True), _per_sample(factor, x))


def adjust_saturation_batch(x, factor):
    """Blend with the per-pixel luma, f per sample (B,)."""
    return _blend(x, rgb_to_grayscale(x), _per_sample(factor, x))


def adjust_hue_batch(x, shift):
    """Rotate the HSV hue by `shift` (in turns, per sample (B,), |shift| <= 0.5); S and V are kept (torchvision adjust_hue).

    Hue in sextants H6 in [0, 6) as torchvision's `_rgb2hsv`; back to RGB with the closed form
    c = V - (V - min) * clamp(min(k, 4 - k), 0, 1), k = (n_c + H6) mod 6, n = (5, 3, 1) for (R, G, B).
    """
    r, g, b = x.split(1, dim=1)
    maxc = x.amax(dim=1, keepdim=True)
    chroma = maxc - x.amin(dim=1, keepdim=True)
    is_r, is_g = maxc == r, maxc == g
    num = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    offset = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    h6 = offset + num / torch.where(chroma > 0, chroma, 1.0) + 6.0 * _per_sample(shift, x)
    n = (5.0 - 2.0 * torch.arange(3, dtype=x.dtype, device=x.device)).view(1, 3, 1, 1)  # (5, 3, 1), no host copy
    k = (n + h6).remainder_(6.0)
    return maxc - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def jitter_factors(n: int, brightness: float, contrast: float, saturation: float, hue: float, gen, device):
    """(n, 4) factors as torchvision ColorJitter: b, c, s ~ U[max(0, 1 - v), 1 + v], hue ~ U[-h, h]."""
    u = _rand(gen, n, 4, device=device)
    lo = (max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue)
    hi = (1 + brightness, 1 + contrast, 1 + saturation, hue)
    return torch.stack([lo[i] + (hi[i] - lo[i]) * u[:, i] for i in range(4)], dim=1)


def _blend_slot(y, op, factors, gray_needed: bool, enabled=None):
    """Apply op[i] in {0: brightness, 1: contrast, 2: saturation, 3: none} to each image i (where `enabled`)."""
    b = y.shape[0]
    use = op < 3 if enabled is None else (op < 3) & enabled
    f = torch.where(use, factors.gather(1, op.clamp(max=2)[:, None]).squeeze(1), 1.0).view(b, 1, 1, 1)
    if gray_needed:
        gray = rgb_to_grayscale(y)
        ref = torch.where((op == 1).view(b, 1, 1, 1), gray.mean(dim=(1, 2, 3), keepdim=True), gray)
        ref = torch.where((op == 0).view(b, 1, 1, 1), 0.0, ref)
    else:
        ref = torch.zeros((), dtype=y.dtype, device=y.device)
    return torch.lerp(ref.expand_as(y), y, f).clamp_(0.0, 1.0)  # = _blend(y, ref, f)


def color_jitter_batch(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float, p: float,
                       gen: torch.Generator, random_order: bool = True) -> torch.Tensor:
    """RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p), per sample.

    `random_order=True` (default) is torchvision's rule: each sample applies the four ops in its own random
    permutation (`torch.randperm(4)` in ColorJitter.get_params). Vectorized without per-sample Python: brightness,
    contrast and saturation are one blend with a per-sample factor and reference (0, mean luma, luma); each sample's
    blends before its hue step run in 3 slots, then the hue rotation runs once for the batch, then the blends after
    it in 3 more slots (a slot is the identity for a sample with nothing to do there). `random_order=False` applies
    brightness, contrast, saturation, hue in that fixed order. A strength of 0 gives factor 1 (an exact identity) and
    hue 0 skips the rotation, as torchvision skips the op.
    """
    b = x.shape[0]
    f = jitter_factors(b, brightness, contrast, saturation, hue, gen, x.device)
    coin = _coin(gen, b, p, x.device)
    order = _rand(gen, b, 4, device=x.device).argsort(dim=1)  # a uniform random permutation per sample
    if not random_order:
        order = torch.arange(4, device=x.device).expand(b, 4)
    gray_needed = contrast != 0 or saturation != 0
    y = x
    if hue != 0:
        hue_at = (order == 3).to(torch.uint8).argmax(dim=1)  # the slot of the hue op (exactly one per row)
        for slot in range(3):
            y = _blend_slot(y, order[:, slot], f, gray_needed, enabled=slot < hue_at)
        y = adjust_hue_batch(y, f[:, 3])
        for slot in range(1, 4):
            y = _blend_slot(y, order[:, slot], f, gray_needed, enabled=slot > hue_at)
    else:
        for slot in range(4):
            y = _blend_slot(y, order[:, slot], f, gray_needed)
    return torch.where(coin, y, x)


def grayscale_batch(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """RandomGrayscale(p): luma copied to the 3 channels with probability p."""
    return torch.where(_coin(gen, x.shape[0], p, x.device), rgb_to_grayscale(x).expand_as(x), x)


# ---------------------------------------------------------------- blur, solarize, normalize

def gaussian_kernel_size(sigma_max: float) -> int:
    """Odd kernel covering +-3 sigma_max (13 taps at sigma 2; DALI's 23-tap window adds < 0.3% of the mass)."""
    return 2 * math.ceil(3 * sigma_max) + 1


def gaussian_blur_batch(x: torch.Tensor, sigma, p: float, gen: torch.Generator, kernel_size: int | None = None):
    """RandomApply([GaussianBlur(sigma ~ U[sigma[0], sigma[1]])], p), per-sample sigma, separable, reflect padding.

    The 1-D kernel is torchvision's: exp(-t^2 / (2 sigma^2)) on t = -K//2..K//2, normalized; K defaults to
    `gaussian_kernel_size(sigma[1])`, capped so the reflect pad fits the image.
    """
    b, c, height, width = x.shape
    s = sigma[0] + (sigma[1] - sigma[0]) * _rand(gen, b, device=x.device)
    coin = _coin(gen, b, p, x.device)
    k = gaussian_kernel_size(sigma[1]) if kernel_size is None else kernel_size
    half = min(k // 2, height - 1, width - 1)
    t = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)
    kern = torch.exp(-0.5 * (t[None, :] / s[:, None]) ** 2)
    kern = (kern / kern.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K), one per channel
    y = x.reshape(1, b * c, height, width)
    y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="reflect"), kern[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, half, half), mode="reflect"), kern[:, None, :, None], groups=b * c)
    return torch.where(coin, y.view(b, c, height, width), x)


def solarize_batch(x: torch.Tensor, p: float, gen: torch.Generator, threshold: float = SOLARIZE_THRESHOLD):
    """RandomSolarize: with probability p, every value >= threshold becomes 1 - value."""
    coin = _coin(gen, x.shape[0], p, x.device)
    return torch.where(coin & (x >= threshold), 1.0 - x, x)


def normalize_batch(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel."""
    m = _constant(mean, x).view(1, -1, 1, 1)
    s = _constant(std, x).view(1, -1, 1, 1)
    return (x - m) / s


def _constant(values, like: torch.Tensor) -> torch.Tensor:
    """A small constant on `like`'s device and dtype, uploaded once per (values, device, dtype) and then reused:
    no host-to-device copy (from pageable memory, which may wait for the device) per batch."""
    return _cached_constant(tuple(float(v) for v in values), like.device, like.dtype)


@functools.lru_cache(maxsize=64)
def _cached_constant(values: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).to(device)


# ---------------------------------------------------------------- one view

def augment_batch(x: torch.Tensor, cfg: ViewConfig, gen: torch.Generator) -> torch.Tensor:
    """One view of a batch: crop → flip → jitter → gray → blur → solarize → normalize; (B,3,S,S) float, channels_last.

    `x` is uint8 or float in [0, 1], (B, 3, H, W). The anchors flip last; flipping commutes with every later op, so
    it is folded into the crop. Ops with probability 0 draw nothing; a deterministic config that keeps the size
    returns the normalized input.
    """
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    _, _, height, width = x.shape
    identity_crop = cfg.is_deterministic and height == width == cfg.size
    if not identity_crop:
        x = random_resized_crop_flip_batch(x, cfg.size, cfg.crop_scale, cfg.crop_ratio, cfg.flip_prob, gen,
                                           cfg.interpolation)
    return after_crop(x, cfg, gen)


def after_crop(x: torch.Tensor, cfg, gen: torch.Generator) -> torch.Tensor:
    """The ops that follow crop + flip: jitter -> gray -> blur -> solarize -> normalize, channels_last.

    `x` is float (B, 3, S, S) in [0, 1], already cropped and flipped (here, or by FFCV's / DALI's decoder).
    """
    if cfg.jitters:
        x = color_jitter_batch(x, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, cfg.jitter_prob, gen)
    if cfg.grayscale_prob > 0:
        x = grayscale_batch(x, cfg.grayscale_prob, gen)
    if cfg.blur_prob > 0:
        x = gaussian_blur_batch(x, cfg.blur_sigma, cfg.blur_prob, gen)
    if cfg.solarize_prob > 0:
        x = solarize_batch(x, cfg.solarize_prob, gen)
    return normalize_batch(x, cfg.mean, cfg.std).contiguous(memory_format=torch.channels_last)
