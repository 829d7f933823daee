"""loaders/__init__.py: the LOADERS registry and make_loader."""
import pytest

import loaders
from fastpnr.errors import ConfigError
from loaders.gpu_resident import GpuResidentLoader

from .utils import random_dataset


def test_exports():
    assert set(loaders.LOADERS) == {"gpu", "torchvision", "ffcv", "dali"}
    assert loaders.ViewConfig is loaders.config.ViewConfig and callable(loaders.augment_batch)


def test_make_gpu_loader():
    ld = loaders.make_loader("gpu", random_dataset(), batch_size=8, num_views=2, device="cpu", seed=0)
    assert isinstance(ld, GpuResidentLoader) and len(ld) == 100 // 8


def test_unknown_kind_lists_allowed():
    with pytest.raises(ConfigError) as e:
        loaders.make_loader("pil", random_dataset(), 8, 2, "cpu", 0)
    assert "\n" not in str(e.value) and "dali, ffcv, gpu, torchvision" in str(e.value)


