"""loaders/gpu_resident.py: order, determinism per (seed, epoch), shapes and errors of the GPU-resident loader."""
import numpy as np
import pytest
import torch

from fastpnr.errors import ConfigError
from loaders import ViewConfig, cifar_views, make_loader
from loaders.gpu_resident import GpuResidentLoader

from .utils import random_dataset


def loader(ds=None, **kw):
    args = dict(batch_size=8, num_views=2, device="cpu", seed=0)
    args.update(kw)
    return GpuResidentLoader(random_dataset() if ds is None else ds, **args)


def collect(ld):
    return [(torch.stack(v), l, i) for v, l, i in ld]


def test_each_subset_index_once_per_epoch():
    subset = np.arange(3, 90, 2)  # 44 indices, batch 8 → 5 full + 1 partial
    ld = loader(subset=subset, drop_last=False)
    assert len(ld) == 6
    for epoch in range(3):
        ld.set_epoch(epoch)
        idx = [i for _, _, i in ld]
        assert [len(i) for i in idx] == [8] * 5 + [4]
        assert sorted(torch.cat(idx).tolist()) == subset.tolist()
    ld = loader(subset=subset, drop_last=True)
    seen = torch.cat([i for _, _, i in ld])
    assert len(ld) == 5 and len(seen) == 40 and len(set(seen.tolist())) == 40 and set(seen.tolist()) <= set(subset)


def test_no_shuffle_keeps_subset_order():
    subset = [5, 1, 7, 3]
    idx = torch.cat([i for _, _, i in loader(subset=subset, batch_size=2, shuffle=False)])
    assert idx.tolist() == subset


def test_batches_are_a_function_of_seed_and_epoch():
    a, b = loader(), loader()
    first = collect(a)
    for (va, la, ia), (vb, lb, ib) in zip(first, collect(b)):
        assert torch.equal(va, vb) and torch.equal(la, lb) and torch.equal(ia, ib)
    a.set_epoch(1)
    second = collect(a)
    assert not torch.equal(first[0][2], second[0][2])
    a.set_epoch(0)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, collect(a)))
    assert not torch.equal(first[0][2], collect(loader(seed=1))[0][2])


def test_batch_passes_yield_each_batch_k_times_with_fresh_views_in_the_same_order():
    """Online CL's minibatch passes: batch b comes k times in a row (same indices and labels), every pass with new
    augmentations; the order over the epoch is the one-pass loader's (its permutation has its own generator)."""
    one, three = loader(subset=np.arange(40)), loader(subset=np.arange(40), batch_passes=3)
    once, thrice = collect(one), collect(three)
    assert len(three) == 3 * len(one) == len(thrice) == 15
    for b, (views, labels, idx) in enumerate(once):
        passes = thrice[3 * b:3 * b + 3]
        assert all(torch.equal(i, idx) and torch.equal(l, labels) for _, l, i in passes)
        assert not torch.equal(passes[0][0], passes[1][0]) and not torch.equal(passes[1][0], passes[2][0])
    torch.testing.assert_close(thrice[0][0], once[0][0], rtol=0, atol=0)  # the first draws of the epoch: the same


def test_views_labels_indices():
    ds = random_dataset(n=40, size=12)
    ev = ViewConfig.eval(12, ds.mean, ds.std)
    ld = make_loader("gpu", ds, batch_size=6, num_views=3, device="cpu", seed=2, view_configs=[ev, ev, cifar_views(10)[1]])
    for views, labels, idx in ld:
        assert len(views) == 3 and labels.dtype == idx.dtype == torch.int64
        assert [tuple(v.shape) for v in views] == [(6, 3, 12, 12)] * 2 + [(6, 3, 10, 10)]
        assert all(v.is_contiguous(memory_format=torch.channels_last) and v.dtype == torch.float32 for v in views)
        assert torch.equal(labels, torch.from_numpy(ds.labels)[idx])
        x = torch.from_numpy(ds.images)[idx].permute(0, 3, 1, 2).float() / 255
        ref = (x - torch.tensor(ds.mean).view(1, 3, 1, 1)) / torch.tensor(ds.std).view(1, 3, 1, 1)
        torch.testing.assert_close(views[0], ref)
        assert torch.equal(views[0], views[1])


def test_views_are_normalized_on_real_statistics():
    ds = random_dataset(n=256, size=16)
    ds.mean, ds.std = tuple(ds.images.reshape(-1, 3).mean(0) / 255), tuple(ds.images.reshape(-1, 3).std(0) / 255)
    ev = ViewConfig.eval(16, ds.mean, ds.std)
    v = torch.cat([views[0] for views, _, _ in loader(ds, batch_size=64, view_configs=ev)])
    torch.testing.assert_close(v.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(v.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_host_resident_matches_device_resident():
    a, b = collect(loader(resident="device")), collect(loader(resident="host"))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[2], y[2]) for x, y in zip(a, b))


@pytest.mark.parametrize("kw,field", [
    (dict(batch_size=101), "batch_size"), (dict(subset=[]), "subset"), (dict(subset=[0, 100]), "subset"),
    (dict(batch_size=0), "batch_size"), (dict(num_views=0), "num_views"), (dict(seed=-1), "seed"),
    (dict(view_configs=[ViewConfig(size=8)] * 3), "len(view_configs)"), (dict(resident="disk"), "resident"),
    (dict(subset=[0.5, 1.0]), "subset.dtype"), (dict(batch_passes=0), "batch_passes"),
])
def test_bad_inputs_give_one_line_errors(kw, field):
    with pytest.raises(ConfigError) as e:
        loader(**kw)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{field}=")


def test_undecoded_source_and_bad_epoch():
    ds = random_dataset()
    ds.images = None
    with pytest.raises(ConfigError, match="source.images"):
        loader(ds)
    with pytest.raises(ConfigError, match="epoch"):
        loader().set_epoch(-1)


def test_drop_last_false_accepts_small_subsets():
    ld = loader(subset=[4, 2], batch_size=8, drop_last=False)
    assert len(ld) == 1 and sorted(next(iter(ld))[2].tolist()) == [2, 4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_iteration_has_no_host_sync():
    ld = loader(device="cuda", batch_size=16)
    next(iter(ld))  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for views, labels, idx in ld:
            assert views[0].is_cuda and labels.is_cuda and idx.is_cuda
    finally:
        torch.cuda.set_sync_debug_mode("default")
