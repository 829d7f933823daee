"""The DALI view graph's arguments, recorded on a stand-in for ``nvidia.dali.fn`` (runs without DALI): the Gaussian
blur uses the anchors' fixed 23 x 23 window (cassle/utils/dali_dataloader.py L116/L128), not DALI's 2*ceil(3 sigma)+1
(at most 13 for sigma <= 2)."""
from __future__ import annotations

from unittest.mock import MagicMock

import pytest

from loaders.config import ViewConfig
from loaders.dali_loader import BLUR_WINDOW, _augment_view


@pytest.mark.parametrize("blur_prob", [0.5, 1.0])
def test_gaussian_blur_window_is_the_anchors_23(blur_prob):
    fn, types = MagicMock(), MagicMock()
    cfg = ViewConfig(size=32, blur_prob=blur_prob, blur_sigma=(0.1, 2.0), jitter_prob=0.0, grayscale_prob=0.0)
    _augment_view(fn, types, MagicMock(), cfg, decoder="cpu", dev="cpu")
    assert BLUR_WINDOW == 23
    assert fn.gaussian_blur.call_count == 1
    assert fn.gaussian_blur.call_args.kwargs["window_size"] == 23
    fn.random.uniform.assert_any_call(range=[0.1, 2.0])  # sigma ~ U[0.1, 2.0], the anchors' 0.1 + 1.9 U[0, 1]


def test_no_blur_op_without_blur():
    fn = MagicMock()
    _augment_view(fn, MagicMock(), MagicMock(), ViewConfig(size=32), decoder="cpu", dev="cpu")
    assert fn.gaussian_blur.call_count == 0
