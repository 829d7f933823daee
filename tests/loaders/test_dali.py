"""loaders/dali_loader.py: the DALI loader on a CPU-only pipeline (device_id=None), real and synthetic JPEGs."""
from __future__ import annotations

import dataclasses
import io
import sys

import numpy as np
import pytest
import torch

import loaders
from fastpnr.errors import ConfigError, DataError, FastPNRError
from loaders.config import ViewConfig

from .utils import assert_binomial, random_dataset

dali = pytest.importorskip("nvidia.dali")


class JpegDataset:
    """A tiny in-memory dataset of encoded JPEGs (non-square 24×32: the crop/resize path sees a real aspect ratio)."""

    name, split = "synth", "train"
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self, n: int = 40, hw=(24, 32), seed: int = 0, num_classes: int = 4):
        from PIL import Image

        rng = np.random.default_rng(seed)
        self.blobs = []
        for _ in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
            self.blobs.append(buf.getvalue())
        self.labels = rng.integers(0, num_classes, n).astype(np.int64)
        self.members = [f"synth::{i}.jpg" for i in range(n)]

    def encoded(self, i: int):
        return self.blobs[i]

    def __len__(self) -> int:
        return len(self.blobs)


@pytest.fixture(scope="module")
def synth():
    return JpegDataset()


@pytest.fixture(scope="module")
def imagenette(data_root):
    from fastpnr.data import load_dataset

    if not (data_root / "imagenette112").is_dir():
        pytest.skip("imagenette112 not found")
    return load_dataset("imagenette112", "val", data_root, decode=False)


def make(source, batch_size=8, num_views=2, seed=0, **kw):
    kw.setdefault("num_threads", 2)
    return loaders.make_loader("dali", source, batch_size, num_views, "cpu", seed, **kw)


def collect(ld, epoch=0):
    ld.set_epoch(epoch)
    return list(ld)


def plain(size, mean, std, **kw) -> ViewConfig:
    """A view with every random op off except those in kw."""
    return dataclasses.replace(ViewConfig.eval(size, mean, std), **kw)


def test_registered_with_install_hint():
    assert loaders.LOADERS["dali"][:2] == ("loaders.dali_loader", "DaliLoader")
    assert "nvidia-dali-cuda130" in loaders.LOADERS["dali"][2]
    assert type(make(JpegDataset(8), 4)).__name__ == "DaliLoader"


def test_real_images_contract(imagenette):
    """~200 real Imagenette JPEGs, the anchors' ImageNet views at 96 px: shapes, dtype, layout, range, labels."""
    subset = np.arange(0, 3925, 19)[:200]  # spread over the classes
    views = loaders.imagenet_views(96, mean=imagenette.mean, std=imagenette.std)
    ld = make(imagenette, 64, view_configs=views, subset=subset, drop_last=False)
    assert len(ld) == 4
    batches = collect(ld)
    seen = []
    for vs, labels, idx in batches:
        assert len(vs) == 2
        for v, cfg in zip(vs, views):
            assert v.shape == (len(idx), 3, 96, 96) and v.dtype == torch.float32
            assert v.is_contiguous(memory_format=torch.channels_last)
            lo = (0 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
            hi = (1 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
            per_c = v.permute(1, 0, 2, 3).reshape(3, -1)
            assert (per_c.min(1).values >= lo - 1e-4).all() and (per_c.max(1).values <= hi + 1e-4).all()
            assert per_c.std(1).min() > 0.1  # real content, not a constant fill
        assert labels.dtype == torch.int64 and idx.dtype == torch.int64
        assert torch.equal(labels, torch.from_numpy(imagenette.labels[idx.numpy()]))
        seen.append(idx)
    assert [len(i) for i in seen] == [64, 64, 64, 8]
    assert sorted(torch.cat(seen).tolist()) == sorted(subset.tolist())
    assert not torch.equal(batches[0][0][0], batches[0][0][1])  # two different views of the same images


def test_subset_once_per_epoch_and_reshuffled(synth):
    subset = np.arange(3, 40, 2)  # 19 indices
    ld = make(synth, 5, num_views=1, subset=subset, drop_last=False, view_configs=plain(8, synth.mean, synth.std))
    assert len(ld) == 4
    orders = []
    for epoch in (0, 1):
        idx = torch.cat([i for _, _, i in collect(ld, epoch)])
        assert sorted(idx.tolist()) == subset.tolist()
        orders.append(idx.tolist())
    assert orders[0] != orders[1]
    dropped = make(synth, 5, num_views=1, subset=subset, drop_last=True, view_configs=plain(8, synth.mean, synth.std))
    idx = torch.cat([i for _, _, i in collect(dropped)])
    assert len(dropped) == 3 and len(idx) == 15 and len(set(idx.tolist())) == 15 and set(idx.tolist()) <= set(subset)
    ordered = make(synth, 5, num_views=1, subset=subset, shuffle=False, drop_last=False,
                   view_configs=plain(8, synth.mean, synth.std))
    assert torch.cat([i for _, _, i in collect(ordered)]).tolist() == subset.tolist()


def test_same_seed_and_epoch_same_batches(synth):
    """Epoch e is a function of (seed, e): equal across loaders and thread counts, different for another epoch."""
    views = [ViewConfig(size=16, blur_prob=0.5, solarize_prob=0.2, mean=synth.mean, std=synth.std)] * 2
    a = collect(make(synth, 8, view_configs=views, num_threads=1), epoch=3)
    b = collect(make(synth, 8, view_configs=views, num_threads=2, prefetch=3), epoch=3)
    for (va, la, ia), (vb, lb, ib) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(la, lb)
        assert all(torch.equal(x, y) for x, y in zip(va, vb))
    c = collect(make(synth, 8, view_configs=views), epoch=4)
    assert not torch.equal(a[0][2], c[0][2])
    d = collect(make(synth, 8, view_configs=views, shuffle=False), epoch=3)
    e = collect(make(synth, 8, view_configs=views, shuffle=False), epoch=4)
    assert torch.equal(d[0][2], e[0][2]) and not torch.equal(d[0][0][0], e[0][0][0])  # same order, new augmentations


def test_eval_view_is_deterministic_and_flip_mirrors(synth):
    ev = ViewConfig.eval(16, synth.mean, synth.std)
    (v1,), _, i1 = collect(make(synth, 8, num_views=1, view_configs=ev, shuffle=False))[0]
    (v2,), _, _ = collect(make(synth, 8, num_views=1, view_configs=ev, shuffle=False, seed=5), epoch=2)[0]
    assert torch.equal(v1, v2)
    flipped = dataclasses.replace(ev, flip_prob=1.0)
    (v3,), _, i3 = collect(make(synth, 8, num_views=1, view_configs=flipped, shuffle=False))[0]
    assert torch.equal(i1, i3) and torch.allclose(v3, v1.flip(-1), atol=1e-5)


def test_probabilistic_ops(imagenette):
    """grayscale p=1 → equal channels; solarize p=1 inverts bright pixels; flip p=0.5 mirrors about half."""
    subset = np.arange(0, 3925, 40)[:96]
    m, s = imagenette.mean, imagenette.std
    base = plain(32, m, s)
    ref, = collect(make(imagenette, 96, num_views=1, view_configs=base, subset=subset, shuffle=False))[0][0]
    gray, = collect(make(imagenette, 96, num_views=1, view_configs=dataclasses.replace(base, grayscale_prob=1.0),
                         subset=subset, shuffle=False))[0][0]
    px = gray * torch.tensor(s).view(1, 3, 1, 1) + torch.tensor(m).view(1, 3, 1, 1)
    assert (px.amax(1) - px.amin(1)).max() < 1.5 / 255
    sol, = collect(make(imagenette, 96, num_views=1, view_configs=dataclasses.replace(base, solarize_prob=1.0),
                        subset=subset, shuffle=False))[0][0]
    to255 = lambda v: (v * torch.tensor(s).view(1, 3, 1, 1) + torch.tensor(m).view(1, 3, 1, 1)) * 255  # noqa: E731
    r, q = to255(ref).round(), to255(sol).round()
    assert torch.allclose(q, torch.where(r >= 128, 255 - r, r), atol=1)
    flip, = collect(make(imagenette, 96, num_views=1, view_configs=dataclasses.replace(base, flip_prob=0.5),
                         subset=subset, shuffle=False))[0][0]
    same = [(flip[k] - ref[k]).abs().max() < 1e-4 for k in range(96)]
    mirrored = [(flip[k] - ref[k].flip(-1)).abs().max() < 1e-4 for k in range(96)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert_binomial(sum(mirrored), 96, 0.5)
    blur, = collect(make(imagenette, 96, num_views=1, view_configs=dataclasses.replace(base, blur_prob=1.0),
                         subset=subset, shuffle=False))[0][0]
    tv = lambda v: (v[..., 1:, :] - v[..., :-1, :]).abs().mean((1, 2, 3))  # noqa: E731 - total variation per image
    assert (tv(blur) < tv(ref)).float().mean() > 0.9


def test_missing_dali_says_how_to_install(monkeypatch, synth):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.setitem(sys.modules, "nvidia.dali.fn", None)
    with pytest.raises(FastPNRError) as e:
        make(synth, 8)
    assert str(e.value) == ("loader kind 'dali' needs NVIDIA DALI: pip install nvidia-dali-cuda130 "
                            "(the extra fastpnr[dali])")


def test_bad_inputs_one_line(synth):
    cases = [
        (ConfigError, "subset", dict(subset=[])),
        (ConfigError, "batch_size", dict(subset=[0, 1, 2], drop_last=True)),
        (ConfigError, "subset", dict(subset=[0, 99])),
    ]
    for err, field, kw in cases:
        with pytest.raises(err, match=field) as e:
            make(synth, 8, **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"decode=False") as e:
        make(random_dataset(), 8)  # decoded images only, no bytes
    assert "\n" not in str(e.value)


def test_corrupt_jpeg_names_the_image():
    ds = JpegDataset(16)
    ds.blobs[5] = ds.blobs[5][:40]
    ld = make(ds, 4, num_views=1, view_configs=plain(8, ds.mean, ds.std), shuffle=False)
    with pytest.raises(DataError, match=r"image 5 \(synth::5.jpg\) does not decode") as e:
        collect(ld)
    assert "\n" not in str(e.value)


def test_shards_read_only_their_rows_of_the_global_batches(synth):
    """torchrun: each rank's pipeline decodes only its rows of every global batch; the ranks' indices, labels (and
    a deterministic eval view) concatenate to one process's; each rank's augmentations are a function of (seed,
    epoch, rank) and differ between ranks."""
    subset = np.arange(1, 38)  # 37 indices: 4 global batches of 8, 5 dropped
    eval_view = plain(16, synth.mean, synth.std)
    whole = collect(make(synth, 8, num_views=1, subset=subset, view_configs=eval_view), epoch=2)
    shards = [collect(make(synth, 8, num_views=1, subset=subset, view_configs=eval_view, shard=s), epoch=2)
              for s in (slice(0, 4), slice(4, 8))]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 4
    for k, (views, labels, idx) in enumerate(whole):
        assert [len(s[k][2]) for s in shards] == [4, 4]
        assert torch.equal(torch.cat([s[k][2] for s in shards]), idx)
        assert torch.equal(torch.cat([s[k][1] for s in shards]), labels)
        torch.testing.assert_close(torch.cat([s[k][0][0] for s in shards]), views[0])
    same = JpegDataset(16)
    same.blobs = [same.blobs[0]] * 16  # one image everywhere: equal pipeline seeds would give the ranks equal crops
    views = [ViewConfig(size=16, crop_scale=(0.05, 1.0), mean=synth.mean, std=synth.std)]
    one, two, again = (collect(make(same, 8, num_views=1, view_configs=views, shard=s), epoch=2)
                       for s in (slice(0, 4), slice(4, 8), slice(4, 8)))
    assert all(torch.equal(a[0][0], b[0][0]) for a, b in zip(two, again))
    assert not any(torch.equal(a[0][0], b[0][0]) for a, b in zip(one, two))
