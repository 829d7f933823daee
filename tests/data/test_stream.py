"""The stream scenario's pieces (fastpnr.data.stream, fastpnr.eval.stream_eval) on synthetic inputs."""
from types import SimpleNamespace

import numpy as np
import pytest

from fastpnr.data.scenarios import class_splits, data_splits
from fastpnr.data.stream import make_stream_chunks, stream_lr
from fastpnr.eval.stream_eval import chunks_progress, record_point, new_stream_metrics, summarize


def fake_dataset(n_per_class=12, classes=10, domains=None):
    labels = np.repeat(np.arange(classes), n_per_class)
    ds = SimpleNamespace(labels=labels, classes=[f"c{i}" for i in range(classes)], name="fake", split="train",
                         members=[], domains=domains, domain_ids=None)
    if domains:
        ds.domain_ids = np.arange(len(labels)) % len(domains)
    return ds


def test_a_class_stream_with_chunks_dividing_the_classes_holds_class_il_tasks():
    ds = fake_dataset()
    chunks = make_stream_chunks("class", ds, 5, seed=5)
    expected = class_splits(10, 5, 5)
    for chunk, classes in zip(chunks, expected):
        assert sorted(set(ds.labels[chunk.train_indices].tolist())) == sorted(classes)
        assert sorted(chunk.classes) == sorted(classes)
    everything = np.concatenate([c.train_indices for c in chunks])
    assert sorted(everything.tolist()) == list(range(120))  # disjoint, complete


def test_a_class_stream_with_more_chunks_than_classes_keeps_the_class_order():
    """20 chunks of 10 classes: each class fills two consecutive chunks, in class-IL's order."""
    ds = fake_dataset()
    chunks = make_stream_chunks("class", ds, 20, seed=5)
    order = [c for task in class_splits(10, 10, 5) for c in task]
    assert [chunk.classes for chunk in chunks] == [[order[k // 2]] for k in range(20)]
    assert all(len(c.train_indices) == 6 for c in chunks)


def test_a_data_stream_is_the_data_il_split_and_a_domain_stream_follows_the_domains():
    ds = fake_dataset()
    chunks = make_stream_chunks("data", ds, 4, seed=5)
    for chunk, split in zip(chunks, data_splits(120, 4)):
        assert np.array_equal(chunk.train_indices, split)
    ds = fake_dataset(domains=["a", "b", "c"])
    chunks = make_stream_chunks("domain", ds, 6, seed=5, domain_order=("c", "a", "b"))
    assert [c.domains for c in chunks] == [["c"], ["c"], ["a"], ["a"], ["b"], ["b"]]


def test_stream_lr_warms_up_then_stays_constant():
    assert [stream_lr(s, 1.0, 4, 0.2) for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert stream_lr(10_000, 0.5, 0, 0.0) == 0.5


def test_stream_summaries_match_a_hand_computed_curve():
    """3 chunks of 10 steps; points at steps 10, 20, 30 (one chunk done at each)."""
    stream = new_stream_metrics([0, 10, 20, 30], 10)
    rows = {10: [60.0, 10.0, 10.0], 20: [40.0, 70.0, 10.0], 30: [50.0, 30.0, 80.0]}
    for step, row in rows.items():
        record_point(stream, step, {"knn": [(row, float(np.mean(row)))]})
    assert chunks_progress(10, [0, 10, 20, 30]) == (1, 1) and chunks_progress(11, [0, 10, 20, 30]) == (2, 1)
    s = stream["summary"]["knn"]
    assert s["final_average_accuracy"] == pytest.approx((50 + 30 + 80) / 3)
    # seen averages: 60, (40 + 70) / 2 = 55, 160 / 3
    assert s["average_accuracy_over_stream"] == pytest.approx((60 + 55 + 160 / 3) / 3)
    # forgetting: chunk 0 best 60 -> 50 (10), chunk 1 best 70 -> 30 (40)
    assert s["forgetting"] == pytest.approx(25.0)
    assert summarize(stream["curve"][:1], "knn")["forgetting"] == 0.0


def test_mean_curve_averages_the_seeds_point_by_point_over_the_steps_all_reached():
    from fastpnr.eval.stream_eval import mean_curve

    a = [{"step": 10, "seen_average": {"knn": 10.0}, "average": {"knn": 20.0}},
         {"step": 20, "seen_average": {"knn": 30.0}, "average": {"knn": 40.0}}]
    b = [{"step": 10, "seen_average": {"knn": 20.0}, "average": {"knn": 40.0}}]
    assert mean_curve([a, b]) == [{"step": 10, "seen_average": {"knn": 15.0}, "average": {"knn": 30.0}}]


def test_set_stream_lr_fills_tensor_and_float_groups_and_keeps_static_ones():
    import torch

    from fastpnr.data.stream import set_stream_lr

    groups = [{"base_lr": 1.0, "lr": torch.tensor(0.0)}, {"base_lr": 0.5, "lr": 0.0},
              {"base_lr": 0.1, "lr": 0.0, "static_lr": True}]
    opt = SimpleNamespace(param_groups=groups)
    set_stream_lr(opt, 1, SimpleNamespace(warmup_steps=4, warmup_start_lr=0.0))
    assert float(groups[0]["lr"]) == pytest.approx(0.25) and groups[1]["lr"] == pytest.approx(0.125)
    assert groups[2]["lr"] == 0.1


def test_a_stream_refuses_warmup_epochs_with_one_line():
    from fastpnr.config import build_config
    from fastpnr.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^optim.warmup_epochs=10 is invalid; allowed: 0 on a stream"):
        build_config("stream", {"optim.warmup_epochs": 10})
