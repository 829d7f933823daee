"""The datasets shipped in shared/data (skipped when absent): sizes, label order, domains, the decode cache."""
from __future__ import annotations

import time

import numpy as np
import pytest

from fastpnr.data import DATASETS, load_dataset

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# shared/data/README.md §3: images per PACS domain and class (dog, elephant, giraffe, guitar, horse, house, person).
PACS_COUNTS = {"art_painting": [379, 255, 285, 184, 201, 295, 449], "cartoon": [389, 457, 346, 135, 324, 288, 405],
               "photo": [189, 202, 182, 186, 199, 280, 432], "sketch": [772, 740, 753, 608, 816, 80, 160]}


@pytest.mark.slow
def test_cifar10_train_decodes_then_hits_the_cache(shared_root, session_cache, monkeypatch):
    import fastpnr.data.dataset as dataset

    t0 = time.perf_counter()
    first = load_dataset("cifar10", "train", shared_root, cache_dir=session_cache)
    t1 = time.perf_counter()

    def no_reading(*a, **k):
        raise AssertionError("a cache hit read the archive")

    # The hit reads no archive entry and decodes nothing (asserted on the work done, not on a wall-clock bound,
    # which a loaded machine can miss: the times are printed).
    monkeypatch.setattr(dataset, "read_entries", no_reading)
    second = load_dataset("cifar10", "train", shared_root, cache_dir=session_cache)
    t2 = time.perf_counter()
    print(f"cifar10 train: decode {t1 - t0:.2f} s, cache hit {t2 - t1:.3f} s")
    assert len(first) == 50000 and first.images.shape == (50000, 32, 32, 3) and first.images.dtype == np.uint8
    assert first.classes == CIFAR10_CLASSES
    assert first.labels.dtype == np.int64 and np.array_equal(np.bincount(first.labels), [5000] * 10)
    assert first.labels[0] == 0 and first.labels[-1] == 9  # members are sorted: airplane first, truck last
    assert not first.from_cache and second.from_cache
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    assert second.members[0].endswith("train.tar.xz::train/airplane/0000.jpg") and second.members == first.members
    assert first.mean == DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465)


def test_cifar10_test_split_and_dataset_folder_as_data_dir(shared_root, suite_cache):
    ds = load_dataset("cifar10", "test", shared_root / "cifar10", cache_dir=suite_cache)
    assert len(ds) == 10000 and ds.images.shape[1:] == (32, 32, 3)
    assert np.array_equal(np.bincount(ds.labels), [1000] * 10)


def test_pacs_domains_and_deterministic_split(shared_root, suite_cache):
    test = load_dataset("pacs", "test", shared_root, cache_dir=suite_cache)
    train = load_dataset("pacs", "train", shared_root, decode=False)  # bytes only: sizes without decoding
    assert test.domains == train.domains == ["art_painting", "cartoon", "photo", "sketch"]
    assert test.classes == ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    assert test.images.shape[1:] == (128, 128, 3)
    for d, counts in PACS_COUNTS.items():
        i = test.domains.index(d)
        n_test = np.bincount(test.labels[test.domain_ids == i], minlength=7)
        n_train = np.bincount(train.labels[train.domain_ids == i], minlength=7)
        assert n_test.tolist() == [c // 5 for c in counts]  # position % 5 == 4 of each sorted domain/class
        assert (n_test + n_train).tolist() == counts
    assert len(test) + len(train) == 9991 and not set(test.members) & set(train.members)


def test_tinyimagenet_classes_from_tsv_and_test_alias(shared_root, suite_cache):
    ds = load_dataset("tinyimagenet100", "test", shared_root, cache_dir=suite_cache)
    rows = [line.split("\t") for line in (shared_root / "tinyimagenet100" / "classes.tsv").read_text().splitlines()]
    assert ds.split == "val" and len(ds) == 5000 and ds.images.shape[1:] == (64, 64, 3)
    assert ds.classes == [r[1] for r in rows] and ds.classes[0] == "n01443537" and ds.classes[99] == "n09428293"
    assert np.array_equal(np.bincount(ds.labels), [50] * 100)
    # labels follow the class folder of each member
    assert all(m.split("/")[-2] == ds.classes[y] for m, y in zip(ds.members[::97], ds.labels[::97]))


@pytest.mark.parametrize("name", sorted(set(DATASETS) - {"imagefolder"}))
def test_registry_entries_are_complete(name):
    spec = DATASETS[name]
    assert spec.num_classes and spec.splits[0] == "train" and len(spec.splits) == 2
    assert spec.native_size or name == "domainnet"  # DomainNet images come in every size
    assert spec.has_domains == (name in ("pacs", "domainnet"))
    assert (spec.download_url is not None) == name.startswith("cifar")
