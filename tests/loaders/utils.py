"""Test helpers: a stand-in for `fastpnr.data.ImageDataset`, real CIFAR-10 images, statistics."""
from __future__ import annotations

import functools
import io
import math
import tarfile
from dataclasses import dataclass

import numpy as np
import torch

from fastpnr.data import resolve_data_root

CIFAR_TEST = resolve_data_root() / "cifar10" / "test.tar.xz"  # $FASTPNR_DATA or ../shared/data beside the checkout


@dataclass
class FakeDataset:
    """The attributes of `ImageDataset` that loaders use."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    mean: tuple = (0.4914, 0.4822, 0.4465)
    std: tuple = (0.247, 0.243, 0.261)
    name: str = "fake"
    split: str = "train"

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def encoded(self, i: int):
        return None

    def __len__(self) -> int:
        return len(self.labels)


def random_dataset(n: int = 100, size: int = 16, seed: int = 0, num_classes: int = 10) -> FakeDataset:
    rng = np.random.default_rng(seed)
    return FakeDataset(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                       rng.integers(0, num_classes, n).astype(np.int64))


@functools.lru_cache(maxsize=1)
def cifar_images(n: int = 512) -> np.ndarray | None:
    """The first n images of the CIFAR-10 test archive as uint8 (n, 32, 32, 3), or None when the archive is absent."""
    if not CIFAR_TEST.exists():
        return None
    from PIL import Image

    out = []
    with tarfile.open(CIFAR_TEST) as tf:
        for m in tf:
            if m.isfile() and m.name.lower().endswith((".png", ".jpg", ".jpeg")):
                out.append(np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")))
                if len(out) == n:
                    break
    return np.stack(out)


def to_float_batch(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W,3) → float (N,3,H,W) in [0, 1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(255).contiguous()


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b|."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                                - np.searchsorted(b, grid, side="right") / len(b))))


def ks_critical(n: int, m: int, alpha: float = 1e-4) -> float:
    """Asymptotic KS critical value at level alpha."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


def assert_binomial(k: int, n: int, p: float, z: float = 5.0) -> None:
    """k successes out of n agree with probability p within z standard deviations."""
    sd = math.sqrt(n * p * (1 - p))
    assert abs(k - n * p) <= z * sd + 1e-9, f"{k}/{n} = {k / n:.4f}, expected p={p}"


def _epoch(loader, epoch=1):
    loader.set_epoch(epoch)
    return list(loader)


def assert_shards_partition(make, batch=8, world=2):
    """The ranks' batches, concatenated in rank order, are the one-process batches: indices, labels and views."""
    whole = _epoch(make(None))
    shards = [_epoch(make(slice(r * batch // world, (r + 1) * batch // world))) for r in range(world)]
    assert all(len(s) == len(whole) for s in shards)
    for k, (views, labels, idx) in enumerate(whole):
        assert torch.equal(torch.cat([s[k][2] for s in shards]), idx)
        assert torch.equal(torch.cat([s[k][1] for s in shards]), labels)
        for v in range(len(views)):
            torch.testing.assert_close(torch.cat([s[k][0][v] for s in shards]), views[v], rtol=0, atol=1e-5)
