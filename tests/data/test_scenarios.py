"""Task splits: disjoint, complete, seed-deterministic; the anchors' torch calls reproduced exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastpnr.data import ImageDataset
from fastpnr.errors import ConfigError, DataError
from fastpnr.data.scenarios import describe_tasks, make_tasks, stratified_subset, task_test_indices


def fake_dataset(n=103, num_classes=10, domains=None, seed=0):
    rng = np.random.default_rng(seed)
    ds = ImageDataset(name="pacs" if domains else "toy", split="train", classes=[f"c{i}" for i in range(num_classes)],
                      labels=rng.integers(0, num_classes, n).astype(np.int64), members=[str(i) for i in range(n)],
                      mean=(0.5,) * 3, std=(0.5,) * 3)
    if domains:
        ds.domains = list(domains)
        ds.domain_ids = rng.integers(0, len(domains), n).astype(np.int64)
    return ds


def _assert_partition(tasks, n):
    allidx = np.concatenate([t.train_indices for t in tasks])
    assert allidx.dtype == np.int64 and len(allidx) == n and len(np.unique(allidx)) == n


def test_class_il_matches_anchor_randperm_and_partitions():
    ds = fake_dataset()
    tasks = make_tasks("class", ds, 5, seed=5)
    torch.manual_seed(5)  # the anchors: seed_everything(5); torch.randperm(num_classes).chunk(num_tasks)
    assert [t.classes for t in tasks] == [c.tolist() for c in torch.randperm(10).chunk(5)]
    _assert_partition(tasks, len(ds))
    for t in tasks:
        assert set(ds.labels[t.train_indices]) <= set(t.classes)
    assert [t.classes for t in make_tasks("class", ds, 5, seed=5)] == [t.classes for t in tasks]
    assert [t.classes for t in make_tasks("class", ds, 5, seed=6)] != [t.classes for t in tasks]
    test_idx = task_test_indices("class", tasks, fake_dataset(seed=1))
    _assert_partition([type(tasks[0])(0, i) for i in test_idx], 103)


def test_data_il_matches_random_split_seed_42():
    ds = fake_dataset(n=103)
    tasks = make_tasks("data", ds, 5, seed=0)
    lengths = [103 // 5 + 103 % 5] + [103 // 5] * 4
    expected = torch.utils.data.random_split(range(103), lengths, generator=torch.Generator().manual_seed(42))
    assert [t.train_indices.tolist() for t in tasks] == [list(s) for s in expected]
    _assert_partition(tasks, 103)
    assert all(np.array_equal(a.train_indices, b.train_indices) for a, b in zip(tasks, make_tasks("data", ds, 5, 9)))
    assert [len(i) for i in task_test_indices("data", tasks, fake_dataset(n=20))] == [20] * 5


def test_domain_il_default_order_and_test_split():
    domains = ["art_painting", "cartoon", "photo", "sketch"]
    ds = fake_dataset(domains=domains)
    tasks = make_tasks("domain", ds, 4, seed=0)
    assert [t.domains for t in tasks] == [["photo"], ["art_painting"], ["cartoon"], ["sketch"]]
    _assert_partition(tasks, len(ds))
    assert all((ds.domain_ids[t.train_indices] == domains.index(t.domains[0])).all() for t in tasks)
    test = fake_dataset(n=40, domains=domains, seed=3)
    for t, idx in zip(tasks, task_test_indices("domain", tasks, test)):
        assert (test.domain_ids[idx] == domains.index(t.domains[0])).all()
    order = ["sketch", "photo", "cartoon", "art_painting"]
    assert [t.domains[0] for t in make_tasks("domain", ds, 4, 0, domain_order=order)] == order


def test_domain_il_domainnet_default_is_the_anchors_order():
    order = ["real", "quickdraw", "painting", "sketch", "infograph", "clipart"]  # anchors §3.2 (base.py self.domains)
    ds = fake_dataset(n=120, domains=order)
    ds.name = "domainnet"
    tasks = make_tasks("domain", ds, 6, seed=0)
    assert [t.domains for t in tasks] == [[d] for d in order]
    _assert_partition(tasks, len(ds))
    assert all((ds.domain_ids[t.train_indices] == t.index).all() for t in tasks)
    with pytest.raises(ConfigError, match=r"num_tasks=5 is invalid; allowed: 6"):
        make_tasks("domain", ds, 5, 0)


def test_bad_arguments_are_config_errors():
    ds = fake_dataset()
    with pytest.raises(ConfigError, match="num_tasks=3"):
        make_tasks("class", ds, 3, seed=0)
    with pytest.raises(ConfigError, match="num_tasks=0"):
        make_tasks("data", ds, 0, seed=0)
    with pytest.raises(ConfigError, match="scenario='task'"):
        make_tasks("task", ds, 2, seed=0)
    pacs = fake_dataset(domains=["art_painting", "cartoon", "photo", "sketch"])
    with pytest.raises(ConfigError, match="domain_order='real'.*allowed: art_painting, cartoon, photo, sketch"):
        make_tasks("domain", pacs, 4, 0, domain_order=["real", "photo", "cartoon", "sketch"])
    with pytest.raises(ConfigError, match="num_tasks=3"):
        make_tasks("domain", pacs, 3, 0)
    with pytest.raises(ConfigError, match="has none"):
        make_tasks("domain", ds, 1, 0)


def test_a_dataset_of_one_class_is_refused_but_one_class_per_task_is_not():
    one = fake_dataset(n=12, num_classes=1)
    for scenario, tasks in (("class", 1), ("data", 2)):
        with pytest.raises(DataError) as e:
            make_tasks(scenario, one, tasks, seed=0)
        msg = str(e.value)
        assert "\n" not in msg and "'toy'" in msg and "a single class, 'c0'" in msg and "at least 2 classes" in msg
    pacs = fake_dataset(n=12, num_classes=1, domains=["art_painting", "cartoon", "photo", "sketch"])
    with pytest.raises(DataError, match="a single class"):
        make_tasks("domain", pacs, 4, 0)
    listed_but_empty = fake_dataset(n=12, num_classes=2)  # two class names, images of only one
    listed_but_empty.labels[:] = 1
    with pytest.raises(DataError, match="a single class, 'c1'"):
        make_tasks("data", listed_but_empty, 2, seed=0)
    tasks = make_tasks("class", fake_dataset(), 10, seed=0)  # class-IL, one class per task: probes see all 10
    assert [len(t.classes) for t in tasks] == [1] * 10


def test_describe_tasks_is_json():
    ds = fake_dataset()
    info = describe_tasks(make_tasks("class", ds, 2, seed=1), ds)
    assert json.loads(json.dumps(info)) == info
    assert info["tasks"][0]["class_names"] == [f"c{c}" for c in info["tasks"][0]["classes"]]


def test_stratified_subset_keeps_the_share_of_every_class_and_is_deterministic():
    labels = np.repeat(np.arange(4), [100, 40, 7, 1])
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    indices = np.arange(len(labels))[::-1].copy()  # any order in, sorted out
    a = stratified_subset(indices, labels, 0.1, seed=42)
    assert np.array_equal(a, stratified_subset(indices, labels, 0.1, seed=42))
    assert not np.array_equal(a, stratified_subset(indices, labels, 0.1, seed=43))
    assert np.all(np.diff(a) > 0) and set(a) <= set(indices)
    counts = np.bincount(labels[a], minlength=4)
    assert counts.tolist() == [10, 4, 1, 1]  # round(n_c * 0.1), at least one per class
    assert np.array_equal(stratified_subset(indices, labels, 1.0), indices)
    sub = indices[:50]  # within a subset (eval.train_fraction first): only its images
    assert set(stratified_subset(sub, labels, 0.5)) <= set(sub)
