"""The anchors' per-sample PIL augmentation, restated for tests (anchors-methods.md §1.4, cassle/solo-learn).

torchvision is not installable here, so this restates what its transforms do on PIL images, drawing from a numpy
generator instead of torch's global one (the same distributions, not the same draws):

  RandomResizedCrop(size, scale, ratio, BICUBIC)   get_params (10 attempts, then the centre fallback), then
                                                   img.crop(box).resize((size, size), BICUBIC)
  RandomApply([ColorJitter(b, c, s, h)], p)        factors U[max(0, 1 - v), 1 + v], hue U[-h, h]; the four ops in a
                                                   random permutation (torch.randperm(4)); a strength of 0 is skipped
      brightness = ImageEnhance.Brightness, contrast = ImageEnhance.Contrast, saturation = ImageEnhance.Color,
      hue = convert("HSV"), H += uint8(hue * 255) with uint8 wrap-around, convert back (F_pil.adjust_hue)
  RandomGrayscale(p)                               convert("L") copied to 3 channels
  RandomApply([GaussianBlur], p)                   ImageFilter.GaussianBlur(radius = sigma ~ U[lo, hi])
  Solarization(p)                                  ImageOps.solarize(img, threshold=128)
  RandomHorizontalFlip(p)                          transpose(FLIP_LEFT_RIGHT)

PIL works in uint8 and truncates after each blend (ImageEnhance = Image.blend: `(UINT8)temp`), so each enhance op
lowers values by ~0.45/255 on average; the float implementations under test do not round at all.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps


def crop_params(height: int, width: int, scale, ratio, rng: np.random.Generator):
    """torchvision RandomResizedCrop.get_params: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def adjust_hue(img: Image.Image, hue: float) -> Image.Image:
    """torchvision F_pil.adjust_hue: rotate the uint8 HSV hue by int(hue * 255) (truncated), wrapping mod 256."""
    h, s, v = img.convert("HSV").split()
    np_h = np.asarray(h, dtype=np.uint8)
    np_h = (np_h.astype(np.int16) + int(hue * 255)) % 256  # = uint8 overflow of np.uint8(hue * 255) on x86
    return Image.merge("HSV", (Image.fromarray(np_h.astype(np.uint8), "L"), s, v)).convert("RGB")


def color_jitter(img: Image.Image, brightness: float, contrast: float, saturation: float, hue: float,
                 rng: np.random.Generator) -> Image.Image:
    """torchvision ColorJitter on a PIL image: per-sample factors and a per-sample random order of the four ops."""
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1 - v), 1 + v) if v else None for v in (brightness, contrast, saturation)]
    factors.append(rng.uniform(-hue, hue) if hue else None)
    ops = (lambda im, f: ImageEnhance.Brightness(im).enhance(f), lambda im, f: ImageEnhance.Contrast(im).enhance(f),
           lambda im, f: ImageEnhance.Color(im).enhance(f), adjust_hue)
    for op in order:
        if factors[op] is not None:
            img = ops[op](img, factors[op])
    return img


def grayscale(img: Image.Image) -> Image.Image:
    """torchvision F_pil.to_grayscale(img, 3): the L channel stacked three times."""
    g = np.asarray(img.convert("L"))
    return Image.fromarray(np.dstack([g, g, g]), "RGB")


def augment(image: np.ndarray, cfg, rng: np.random.Generator) -> np.ndarray:
    """One view of one uint8 (H, W, 3) image with the anchors' PIL pipeline for ViewConfig `cfg`; uint8 (S, S, 3).

    Order: crop -> jitter -> grayscale -> blur -> solarize -> flip (cassle/utils/pretrain_dataloader.py).
    """
    img = Image.fromarray(image)
    height, width = image.shape[:2]
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[cfg.interpolation]
    top, left, h, w = crop_params(height, width, cfg.crop_scale, cfg.crop_ratio, rng)
    if (top, left, h, w) != (0, 0, height, width) or (height, width) != (cfg.size, cfg.size):
        img = img.crop((left, top, left + w, top + h)).resize((cfg.size, cfg.size), resample)
    if rng.random() < cfg.jitter_prob:
        img = color_jitter(img, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, rng)
    if rng.random() < cfg.grayscale_prob:
        img = grayscale(img)
    if rng.random() < cfg.blur_prob:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*cfg.blur_sigma)))
    if rng.random() < cfg.solarize_prob:
        img = ImageOps.solarize(img, threshold=128)
    if rng.random() < cfg.flip_prob:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(img)


def augment_many(images: np.ndarray, cfg, passes: int, seed: int) -> np.ndarray:
    """`passes` independent views of every image, pass-major: uint8 (passes * N, S, S, 3)."""
    rng = np.random.default_rng(seed)
    return np.stack([augment(im, cfg, rng) for _ in range(passes) for im in images])
