"""loaders/torchvision_loader.py: the per-sample reference pipeline.

Without torchvision (this venv) the DataLoader plumbing is tested with stand-in transforms; the torchvision
transforms themselves are checked only where torchvision is installed.
"""
import importlib.util

import numpy as np
import pytest
import torch

import loaders
from fastpnr.errors import FastPNRError
from loaders.torchvision_loader import TorchvisionLoader

from .utils import cifar_images, FakeDataset, random_dataset

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


class NoisyFlip:
    """PIL → (3,H,W) float; a random flip and random noise drawn from torch's global RNG (as torchvision does)."""

    def __call__(self, img):
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x + 0.01 * torch.rand(())


def tv_loader(ds=None, **kw):
    args = dict(batch_size=8, num_views=2, device="cpu", seed=0, transforms=[NoisyFlip(), NoisyFlip()], num_workers=0)
    args.update(kw)
    return TorchvisionLoader(random_dataset() if ds is None else ds, **args)


def collect(ld):
    return [(torch.stack(v), l, i) for v, l, i in ld]


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed")
def test_missing_torchvision_is_a_one_line_error():
    with pytest.raises(FastPNRError, match="torchvision is not installed; install it with") as e:
        loaders.make_loader("torchvision", random_dataset(), 8, 2, "cpu", 0, num_workers=0)
    assert "\n" not in str(e.value)


def test_contract_with_stand_in_transforms():
    ds = random_dataset(n=30, size=6)
    ld = tv_loader(ds, subset=np.arange(0, 30, 3), batch_size=4, drop_last=False)
    assert len(ld) == 3
    seen = []
    for views, labels, idx in ld:
        assert len(views) == 2 and views[0].shape[1:] == (3, 6, 6)
        assert all(v.is_contiguous(memory_format=torch.channels_last) for v in views)
        assert labels.dtype == idx.dtype == torch.int64 and torch.equal(labels, torch.from_numpy(ds.labels)[idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(0, 30, 3))


def test_deterministic_per_epoch_whatever_the_workers():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = collect(tv_loader())
    assert torch.equal(torch.rand(3), before)  # the trainer's global RNG is left alone
    b = collect(tv_loader(num_workers=2))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[2], y[2]) for x, y in zip(a, b))
    ld = tv_loader()
    ld.set_epoch(1)
    c = collect(ld)
    assert not torch.equal(a[0][2], c[0][2]) and not torch.equal(a[0][0], c[0][0])
    seen = torch.cat([x[2] for x in c]).tolist()
    assert len(seen) == len(set(seen)) == 96  # drop_last: 12 full batches of 8, no index twice


def test_bad_inputs():
    from fastpnr.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        tv_loader(batch_size=101)
    with pytest.raises(ConfigError, match="subset"):
        tv_loader(subset=[])
    with pytest.raises(ConfigError, match="len\\(transforms\\)"):
        tv_loader(transforms=[NoisyFlip()])


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_image_is_one_line_with_or_without_workers(num_workers):
    """A source keeping encoded bytes decodes in the workers; its DataError (naming the member) must reach the caller
    as one line, not as DataLoader's "Caught DataError in DataLoader worker process 0" + the worker's traceback."""
    from fastpnr.errors import DataError

    msg = "corrupt image 'cifar10/train.tar::train/cat/7.png' (OSError: image file is truncated); use --skip-corrupt"

    class Encoded(FakeDataset):
        def image(self, i):
            if i == 7:
                raise DataError(msg)
            return self.images[i]

    good = random_dataset(n=20, size=6)
    ds = Encoded(images=good.images, labels=good.labels)
    ld = tv_loader(ds, num_workers=num_workers, shuffle=False, batch_size=4)
    ld.loader.dataset.images = None  # as a dataset loaded with decode=False: every image goes through image(i)
    with pytest.raises(DataError) as e:
        list(ld)
    assert str(e.value) == msg


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed")
def test_gpu_views_match_torchvision_statistics():
    """Same recipe, same real images: per-channel mean/std of the views agree between the two pipelines."""
    imgs = cifar_images(512)
    if imgs is None:
        pytest.skip("CIFAR-10 test archive absent")
    ds = FakeDataset(imgs, np.zeros(len(imgs), dtype=np.int64))
    cfgs = loaders.cifar_views(32, ds.mean, ds.std)
    stats = {}
    for kind, kw in [("gpu", {}), ("torchvision", {"num_workers": 0})]:
        ld = loaders.make_loader(kind, ds, 128, 2, "cpu", 0, view_configs=cfgs, **kw)
        v = torch.cat([views[1] for views, _, _ in ld])
        stats[kind] = torch.cat([v.mean(dim=(0, 2, 3)), v.std(dim=(0, 2, 3))])
    torch.testing.assert_close(stats["gpu"], stats["torchvision"], atol=0.08, rtol=0)
