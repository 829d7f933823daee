"""loaders/config.py: the anchors' defaults (anchors-methods.md §1.4) and one-line validation errors."""
import dataclasses

import pytest

from fastpnr.errors import ConfigError
from loaders.config import ViewConfig, cifar_views, imagenet_views


def test_defaults_are_the_anchors_cifar_recipe():
    v = ViewConfig(size=32)
    assert (v.crop_scale, v.crop_ratio, v.interpolation) == ((0.08, 1.0), (3 / 4, 4 / 3), "bicubic")
    assert (v.brightness, v.contrast, v.saturation, v.hue, v.jitter_prob) == (0.4, 0.4, 0.2, 0.1, 0.8)
    assert (v.grayscale_prob, v.blur_prob, v.solarize_prob, v.flip_prob) == (0.2, 0.0, 0.0, 0.5)
    assert (v.mean, v.std) == ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
    assert not v.is_deterministic and v.jitters
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.size = 16


def test_view_presets():
    a, b = cifar_views(32)
    assert (a.solarize_prob, b.solarize_prob, a.blur_prob, b.blur_prob) == (0.0, 0.2, 0.0, 0.0)
    assert cifar_views(32, min_scale=0.2)[0].crop_scale == (0.2, 1.0)
    a, b = imagenet_views()
    assert (a.size, a.blur_prob, b.blur_prob, a.solarize_prob, b.solarize_prob) == (224, 1.0, 0.1, 0.0, 0.2)
    assert a.std == (0.228, 0.224, 0.225) and a.interpolation == "bicubic"


def test_eval_is_deterministic():
    e = ViewConfig.eval(32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert e.is_deterministic and not e.jitters and e.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("field,value", [
    ("size", 0), ("size", 3.5), ("crop_scale", (0.5, 0.2)), ("crop_scale", (0.0, 1.0)), ("crop_scale", (0.5, 1.5)),
    ("crop_ratio", (2.0, 1.0)), ("interpolation", "nearest"), ("brightness", -0.1), ("hue", 0.6),
    ("jitter_prob", 1.5), ("grayscale_prob", -0.1), ("blur_prob", 2), ("solarize_prob", -1), ("flip_prob", 1.1),
    ("blur_sigma", (0.0, 1.0)), ("mean", (0.5, 0.5)), ("std", (0.2, 0.0, 0.2)),
])
def test_bad_values_give_one_line_errors(field, value):
    kw = {"size": 32, field: value}
    with pytest.raises(ConfigError) as e:
        ViewConfig(**kw)
    msg = str(e.value)
    assert "\n" not in msg and f"view.{field}=" in msg and "allowed" in msg


def test_preset_length_mismatch():
    with pytest.raises(ConfigError, match="blur"):
        cifar_views(32, solarize=(0.0, 0.2), blur=(0.0,))
