"""Decode-time resizing: "stretch" (the whole image) and "center" (the anchors' Resize(256) + CenterCrop(224) eval
transform, scaled to any size). Expected boxes are worked out by hand below, not by the code under test."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fastpnr.config import build_config
from fastpnr.data import load_dataset
from fastpnr.data.decode import Resize, decode_image, resize_array
from fastpnr.errors import ConfigError
from tests.data.utils import write_tree


def _png(width: int, height: int, seed: int = 0) -> tuple[bytes, Image.Image]:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), img


@pytest.mark.parametrize("width,height,size,resized,box", [
    # landscape 300x200 -> 224: shorter side 200 -> 256, longer int(256 * 300 / 200) = 384; crop (80, 16)
    (300, 200, 224, (384, 256), (80, 16, 304, 240)),
    # portrait 150x400 -> 32: shorter side -> round(32 * 256 / 224) = 37, longer int(37 * 400 / 150) = 98;
    # top round(66 / 2) = 33, left round(5 / 2) = 2 (round half to even, as torchvision's CenterCrop)
    (150, 400, 32, (37, 98), (2, 33, 34, 65)),
])
def test_center_mode_is_resize_shorter_side_then_center_crop(width, height, size, resized, box):
    data, img = _png(width, height)
    got = decode_image(data, Resize(size, size, "center"))
    want = np.asarray(img.resize(resized, Image.BICUBIC).crop(box))
    assert got.shape == (size, size, 3)
    np.testing.assert_array_equal(got, want)


def test_stretch_mode_and_plain_tuples_resize_the_whole_image():
    data, img = _png(300, 200, seed=1)
    want = np.asarray(img.resize((40, 30), Image.BICUBIC))
    np.testing.assert_array_equal(decode_image(data, (30, 40)), want)
    np.testing.assert_array_equal(decode_image(data, Resize(30, 40)), want)


def test_resize_array_center_mode_crops_even_at_the_target_size():
    """A 32x32 array asked for 32x32 "center" is zoomed by 256/224 and centre-cropped, not returned as is."""
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    assert resize_array(images, Resize(32, 32)) is images
    out = resize_array(images, Resize(32, 32, "center"))
    want = np.asarray(Image.fromarray(images[1]).resize((37, 37), Image.BICUBIC).crop((2, 2, 34, 34)))
    np.testing.assert_array_equal(out[1], want)


def test_load_dataset_center_mode_has_its_own_cache(tmp_path):
    files = {f"c{i % 2}/{i}.png": _png(60 + 10 * i, 40, seed=i)[0] for i in range(4)}
    write_tree(tmp_path / "data", "train", files)
    kw = dict(image_size=24, cache_dir=tmp_path / "cache")
    stretch = load_dataset("imagefolder", "train", tmp_path / "data", **kw)
    center = load_dataset("imagefolder", "train", tmp_path / "data", resize="center", **kw)
    assert stretch.images.shape == center.images.shape == (4, 24, 24, 3)
    assert not np.array_equal(stretch.images, center.images)
    folders = sorted(p.name for p in (tmp_path / "cache" / "imagefolder").iterdir())
    assert len(folders) == 2 and any("24x24-center-" in f for f in folders)
    again = load_dataset("imagefolder", "train", tmp_path / "data", resize="center", **kw)
    assert again.from_cache and np.array_equal(again.images, center.images)
    with pytest.raises(ConfigError, match="resize='crop' is invalid; allowed: stretch, center"):
        load_dataset("imagefolder", "train", tmp_path / "data", resize="crop", **kw)


def test_imagenet_and_domainnet_presets_decode_with_the_anchors_center_crop():
    for preset in ("imagenet100-5t", "imagenet100-data-5t", "domainnet-6t"):
        d = build_config(preset).data
        assert (d.image_size, d.resize) == (224, "center"), preset
    assert build_config("cifar100-5t").data.resize == "stretch"
    with pytest.raises(ConfigError, match="data.resize='crop' is invalid; allowed: stretch, center"):
        build_config("smoke", {"data.resize": "crop"})
