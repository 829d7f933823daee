"""loaders/ffcv_loader.py, loaders/ffcv_ops.py, scripts/to_beton.py: write a .beton, read it back through FFCV.

Skipped when ffcv is not installed. FFCV's numba pipelines compile on each loader's first epoch (~2 s for
crop="device", ~15 s for the two-view crop="decoder" loader on 2 cores) and `import ffcv` costs ~9 s, so the
module builds few loaders and runs each with num_workers=1.
"""
from __future__ import annotations

import gc
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

pytest.importorskip("ffcv")

from fastpnr.errors import ConfigError, DataError, FastPNRError  # noqa: E402
from loaders import ViewConfig, cifar_views, make_loader  # noqa: E402
from loaders.ffcv_loader import FfcvLoader  # noqa: E402
from loaders.ffcv_ops import FFCV_MISSING, check_schema, import_ffcv, write_beton  # noqa: E402

from .utils import FakeDataset, cifar_images, random_dataset  # noqa: E402

# numba's dispatcher finalizer raises a harmless KeyError when FFCV's recompiled pipelines are collected
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

N = 300
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@dataclass
class DomainDataset(FakeDataset):
    domain_ids: np.ndarray | None = None


@pytest.fixture(scope="module", autouse=True)
def _collect_pipelines():
    """Collect FFCV's dead pipelines while the filter above applies (not at interpreter exit)."""
    yield
    gc.collect()


@pytest.fixture(scope="module")
def source():
    images = cifar_images(N)
    if images is None:  # no real data: random pixels exercise the same code
        images = random_dataset(n=N, size=32).images
    rng = np.random.default_rng(0)
    return DomainDataset(images=images, labels=rng.integers(0, 10, N).astype(np.int64), mean=MEAN, std=STD,
                         domain_ids=rng.integers(0, 4, N).astype(np.int64))


@pytest.fixture(scope="module")
def beton(source, tmp_path_factory):
    return write_beton(source, tmp_path_factory.mktemp("ffcv") / "tiny.beton", num_workers=1)


def normalized(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def one_line(e) -> str:
    s = str(e.value)
    assert "\n" not in s
    return s


def test_write_schema(beton, source):
    reader, fields = check_schema(beton)
    assert fields == {"image": "RGBImageField", "label": "IntField", "index": "IntField", "domain": "IntField"}
    assert reader.num_samples == N
    assert np.array_equal(reader.metadata["f1"], source.labels) and np.array_equal(reader.metadata["f2"], np.arange(N))
    assert np.array_equal(reader.metadata["f3"], source.domain_ids)
    assert not list(beton.parent.glob(".*tmp*"))  # atomic write: no temporary left


def test_device_crop_views_labels_order_determinism(beton, source):
    subset = np.arange(3, N, 2)  # 149 indices, batch 32 → 4 full + 1 partial
    views = [ViewConfig.eval(32, MEAN, STD), cifar_views(24, MEAN, STD)[1]]
    ld = make_loader("ffcv", str(beton), batch_size=32, num_views=2, device="cpu", seed=5, drop_last=False,
                     view_configs=views, subset=subset, num_workers=1)
    assert isinstance(ld, FfcvLoader) and len(ld) == 5

    def epoch(e):
        ld.set_epoch(e)
        return list(ld)

    first = epoch(0)
    assert [len(i) for _, _, i in first] == [32] * 4 + [21]
    idx = torch.cat([i for _, _, i in first])
    assert sorted(idx.tolist()) == subset.tolist()  # each subset index exactly once
    assert idx.tolist() != subset.tolist()  # shuffled
    for (v0, v1), labels, i in first:
        assert labels.dtype == i.dtype == torch.int64 and labels.device.type == "cpu"
        assert torch.equal(labels, torch.from_numpy(source.labels[i.numpy()]))
        assert v0.shape == (len(i), 3, 32, 32) and v1.shape == (len(i), 3, 24, 24)
        assert all(v.dtype == torch.float32 and v.is_contiguous(memory_format=torch.channels_last) for v in (v0, v1))
        # the eval view is exactly the normalized stored image: data path and normalization are right
        torch.testing.assert_close(v0, normalized(source.images[i.numpy()]), rtol=0, atol=1e-5)
    second = epoch(1)
    assert sorted(torch.cat([i for _, _, i in second]).tolist()) == subset.tolist()
    assert not torch.equal(first[0][2], second[0][2])
    again = epoch(0)  # (seed, epoch) fixes the batches exactly: order, labels and augmentations
    for (va, la, ia), (vb, lb, ib) in zip(first, again):
        assert torch.equal(ia, ib) and torch.equal(la, lb) and all(torch.equal(a, b) for a, b in zip(va, vb))


def test_no_shuffle_and_early_exit(beton):
    subset = [7, 1, 250, 3, 9, 42]
    ld = FfcvLoader(beton, batch_size=4, num_views=1, device="cpu", seed=0, shuffle=False, subset=subset,
                    num_workers=1)
    assert len(ld) == 1
    assert next(iter(ld))[2].tolist() == subset[:4]  # sequential keeps the subset order; leaving early is fine
    assert [i.tolist() for _, _, i in ld] == [subset[:4]]


def test_quasi_random_order_is_a_function_of_seed_and_epoch(beton):
    subset = np.arange(0, N, 3)
    ld = FfcvLoader(beton, batch_size=32, num_views=1, device="cpu", seed=3, subset=subset, order="quasi_random",
                    os_cache=False, num_workers=1)

    def order(e):
        ld.set_epoch(e)
        return torch.cat([i for _, _, i in ld])

    a, b, a2 = order(0), order(1), order(0)
    assert len(set(a.tolist())) == len(a) == 96 and set(a.tolist()) <= set(subset.tolist())
    assert torch.equal(a, a2) and not torch.equal(a, b)


def test_decoder_crop_two_pipelines_from_one_field(beton, source):
    views = [ViewConfig.eval(32, MEAN, STD), cifar_views(16, MEAN, STD)[1]]
    ld = make_loader("ffcv", str(beton), batch_size=64, num_views=2, device="cpu", seed=1, view_configs=views,
                     crop="decoder", num_workers=1)
    assert len(ld) == N // 64
    seen = []
    for (v0, v1), labels, i in ld:
        seen += i.tolist()
        assert v0.shape == (64, 3, 32, 32) and v1.shape == (64, 3, 16, 16)
        assert v1.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(labels, torch.from_numpy(source.labels[i.numpy()]))
        # scale = ratio = 1 at the stored size: FFCV's crop is the whole image, INTER_AREA at 1:1 copies it
        torch.testing.assert_close(v0, normalized(source.images[i.numpy()]), rtol=0, atol=1e-5)
    assert len(seen) == len(set(seen)) == (N // 64) * 64


def test_bad_inputs(beton, source, tmp_path):
    kw = dict(batch_size=8, num_views=2, device="cpu", seed=0)
    with pytest.raises(DataError, match="does not exist") as e:
        FfcvLoader(tmp_path / "missing.beton", **kw)
    one_line(e)
    junk = tmp_path / "junk.beton"
    junk.write_bytes(b"not an ffcv file" * 10)
    with pytest.raises(DataError, match="is not a readable FFCV .beton") as e:
        FfcvLoader(junk, **kw)
    one_line(e)
    truncated = tmp_path / "truncated.beton"  # a copy cut short (an interrupted transfer, a full disk)
    truncated.write_bytes(beton.read_bytes()[: beton.stat().st_size // 2])
    with pytest.raises(DataError, match="is not a readable FFCV .beton \\(truncated") as e:
        FfcvLoader(truncated, **kw)
    one_line(e)
    with pytest.raises(DataError, match="is a directory") as e:
        FfcvLoader(tmp_path, **kw)
    one_line(e)
    with pytest.raises(ConfigError, match="a .beton path") as e:
        FfcvLoader(source, **kw)
    one_line(e)
    with pytest.raises(ConfigError, match="empty") as e:
        FfcvLoader(beton, subset=[], **kw)
    one_line(e)
    with pytest.raises(ConfigError, match="batch_size=8 is invalid") as e:
        FfcvLoader(beton, subset=[1, 2, 3], **kw)
    one_line(e)
    FfcvLoader(beton, subset=[1, 2, 3], drop_last=False, **kw)  # a short last batch is fine without drop_last
    with pytest.raises(ConfigError, match="indices in"):
        FfcvLoader(beton, subset=[0, N], **kw)
    with pytest.raises(ConfigError, match="crop="):
        FfcvLoader(beton, crop="gpu", **kw)
    with pytest.raises(ConfigError, match="os_cache"):
        FfcvLoader(beton, order="quasi_random", **kw)

    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    other = tmp_path / "other.beton"
    DatasetWriter(str(other), {"img": RGBImageField(), "y": IntField()}, num_workers=1).from_indexed_dataset(
        [(source.images[i], int(source.labels[i])) for i in range(4)])
    with pytest.raises(DataError, match="fastpnr needs") as e:
        FfcvLoader(other, **kw)
    one_line(e)


def test_missing_ffcv_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "ffcv.writer", None)  # makes `import ffcv.writer` fail
    with pytest.raises(FastPNRError, match="pip install ffcv==1.0.2") as e:
        import_ffcv()
    assert one_line(e).startswith(FFCV_MISSING)


def test_to_beton_cli_round_trip(data_root, tmp_path, capsys):
    from fastpnr import cli
    from fastpnr.data import load_dataset

    out = tmp_path / "c10.beton"
    cli.main(["to_beton", "--dataset", "cifar10", "--split", "test", "--data-dir", str(data_root), "--out", str(out),
              "--image-format", "jpeg", "--num-workers", "1"])
    printed = capsys.readouterr()
    assert printed.out.strip() == str(out)
    ds = load_dataset("cifar10", "test", data_root)
    assert f"{len(ds)}/{len(ds)}" in printed.err and "100%" in printed.err  # the writer's progress bar, run to the end
    assert f"wrote {len(ds)} images of cifar10/test to {out}" in printed.err
    reader, fields = check_schema(out)
    assert set(fields) == {"image", "label", "index"} and reader.num_samples == len(ds)
    assert np.array_equal(reader.metadata["f1"], ds.labels) and np.array_equal(reader.metadata["f2"], np.arange(len(ds)))
    assert set(reader.metadata["f0"]["mode"].tolist()) == {0}  # every image stored as JPEG
    with pytest.raises(SystemExit) as e:
        cli.main(["to_beton", "--dataset", "cifar10", "--image-format", "png"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: image_format='png' is invalid; allowed: raw, jpeg"


@pytest.mark.parametrize("order", ["random", "quasi_random"])
def test_shards_read_only_their_rows_and_partition_the_global_batch(beton, order):
    """torchrun: each rank's FFCV loader reads its rows of every global batch (not the whole batch), and the ranks'
    batches, augmentations included, concatenate to one process's."""
    from .utils import assert_shards_partition

    views = [ViewConfig(size=32, crop_scale=(0.2, 1.0), blur_prob=0.5, solarize_prob=0.2, mean=MEAN, std=STD)] * 2
    made = []

    def make(shard):
        loader = make_loader("ffcv", str(beton), 8, 2, "cpu", seed=3, view_configs=views, subset=np.arange(5, 45),
                             shard=shard, num_workers=1, order=order, os_cache=order != "quasi_random")
        made.append(loader)
        return loader

    assert_shards_partition(make)
    assert [m._loader.batch_size for m in made] == [8, 4, 4] and [len(m) for m in made] == [5, 5, 5]


def test_more_workers_than_numba_threads_are_capped(beton):
    """data.num_workers (default 4) on a machine with fewer cores: numba refuses more threads than it has, so the
    loader caps them instead of failing."""
    import numba

    loader = make_loader("ffcv", str(beton), 8, 1, "cpu", seed=0, num_workers=numba.config.NUMBA_NUM_THREADS + 3)
    assert loader.num_workers == numba.config.NUMBA_NUM_THREADS
    batches = iter(loader)
    views, labels, idx = next(batches)
    batches.close()  # leaving early: the loader stops FFCV's thread and waits for it (else an abort at exit)
    assert views[0].shape == (8, 3, 32, 32) and len(idx) == 8
