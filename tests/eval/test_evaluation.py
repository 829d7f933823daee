"""Continual metrics, kNN, the feature linear probe, the official protocol's schedule and head, seeds, subsets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastpnr.eval import evaluation as ev


def test_average_accuracy_forgetting_forward_transfer_by_hand():
    a = [[80.0, 10.0, 12.0],
         [60.0, 70.0, 20.0],
         [50.0, 65.0, 75.0]]
    m = ev.ContinualMetrics(a)
    assert m.average_accuracy() == pytest.approx((50 + 65 + 75) / 3)
    # task 0: best earlier 80 -> 50 (30); task 1: best earlier 70 -> 65 (5)
    assert m.forgetting() == pytest.approx((30 + 5) / 2)
    # a[0][1] - b_1 = 10 - 8, a[1][2] - b_2 = 20 - 11
    assert m.forward_transfer([9.0, 8.0, 11.0]) == pytest.approx((2 + 9) / 2)
    partial = ev.ContinualMetrics(a[:1])
    assert partial.forgetting() == 0.0 and partial.forward_transfer([0, 0, 0]) is None
    assert partial.average_accuracy() == pytest.approx(80.0)  # only task 0 has been seen


def test_forgetting_per_task_by_hand():
    a = [[80.0, 10.0, 12.0],
         [60.0, 70.0, 20.0],
         [50.0, 65.0, 75.0]]
    m = ev.ContinualMetrics(a)
    # task 0: best earlier 80 -> 50; task 1: best earlier 70 -> 65; forgetting() is their mean
    assert m.forgetting_per_task() == pytest.approx([30.0, 5.0]) and ev.ContinualMetrics(a[:1]).forgetting_per_task() == []


def test_knn_votes_with_exponential_weights():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    train_y = torch.tensor([0, 0, 1])
    test_x = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    scores = ev.knn_predict(train_x, train_y, test_x, num_classes=2, k=2, temperature=0.1)
    assert scores.argmax(1).tolist() == [0, 1]
    sims = torch.nn.functional.normalize(test_x[:1], dim=1) @ torch.nn.functional.normalize(train_x, dim=1).T
    top = sims[0].topk(2).values
    assert scores[0, 0] == pytest.approx((top / 0.1).exp().sum().item(), rel=1e-5)


def test_linear_probe_separates_separable_features_and_part_accuracies():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(50)
    x = torch.randn(200, 8, generator=g) * 0.1 + torch.nn.functional.one_hot(y, 8).float() * 3
    predict = ev.linear_probe(x, y, 4, epochs=20, lr=0.1, batch_size=64, seed=0)
    logits = predict(x)
    assert ev.accuracy(logits, y) == 100.0
    parts = [torch.arange(0, 100).numpy(), torch.arange(100, 200).numpy()]
    assert ev.part_accuracies(logits, y, parts) == [100.0, 100.0]


def test_final_average_accuracy_and_average_incremental_accuracy_by_hand():
    a = [[80.0, 10.0, 12.0],
         [60.0, 70.0, 20.0],
         [50.0, 65.0, 75.0]]
    m = ev.ContinualMetrics(a)
    # A_0 = 80; A_1 = (60 + 70) / 2 = 65; A_2 = (50 + 65 + 75) / 3
    assert m.final_average_accuracy() == pytest.approx(190 / 3)
    assert m.average_incremental_accuracy() == pytest.approx((80 + 65 + 190 / 3) / 3)
    assert m.average_accuracy() == m.final_average_accuracy()  # the old name, kept as an alias of A_T
    assert ev.ContinualMetrics(a[:2]).average_incremental_accuracy() == pytest.approx((80 + 65) / 2)


def test_eval_seed_rule_keeps_single_fit_seeds_and_separates_repeats():
    assert ev.eval_seed(5, 0) == 5 and ev.eval_seed(5, 3) == 8  # train.seed + task, as runs before linear_seeds
    assert ev.eval_seed(5, -1) == 4                             # the random-init model
    seeds = {ev.eval_seed(5, t, r) for t in range(-1, 20) for r in range(5)}
    assert len(seeds) == 21 * 5


def test_summarize_fits_mean_and_sample_std():
    fits = [([10.0, 20.0], 15.0), ([14.0, 26.0], 21.0), ([12.0, 23.0], 18.0)]
    s = ev.summarize_fits(fits)
    assert s["row"] == pytest.approx([12.0, 23.0]) and s["test_accuracy"] == pytest.approx(18.0)
    assert s["row_std"] == pytest.approx([np.std([10, 14, 12], ddof=1), np.std([20, 26, 23], ddof=1)])
    assert s["test_accuracy_std"] == pytest.approx(3.0)
    assert ev.summarize_fits(fits[:1])["row_std"] == [0.0, 0.0]


@pytest.mark.parametrize("epochs", [100, 10, 3])
def test_official_lr_schedule_is_multistep_at_60_and_80_percent(epochs):
    """Restated with torch's MultiStepLR at [0.6 E, 0.8 E] ([60, 80] for the anchors' 100 epochs), gamma 0.1."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=3.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, int(0.6 * epochs)), max(1, int(0.8 * epochs))], gamma=0.1)
    expected = []
    for _ in range(epochs):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [ev.official_lr(3.0, e, epochs) for e in range(epochs)] == pytest.approx(expected)
    if epochs == 100:
        assert ev.official_lr(3.0, 59, 100) == 3.0 and ev.official_lr(3.0, 60, 100) == pytest.approx(0.3)
        assert ev.official_lr(3.0, 80, 100) == pytest.approx(0.03)


class _Batches:
    """A loader stand-in: fixed (views, labels, indices) batches, the same every epoch."""

    def __init__(self, batches):
        self.batches = batches

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(self.batches)


def test_official_head_is_plain_sgd_without_momentum_or_weight_decay():
    """train_official_head == a restatement: w <- w - lr_e * dCE/dw per batch, lr_e the MultiStep schedule."""
    g = torch.Generator().manual_seed(0)
    backbone = torch.nn.Linear(6, 5)
    batches = [([torch.randn(8, 6, generator=g)], torch.randint(0, 3, (8,), generator=g), None) for _ in range(2)]
    head = ev.train_official_head(backbone, _Batches(batches), 5, 3, epochs=5, lr=0.5, momentum=0.0, seed=7)
    torch.manual_seed(7)
    ref = torch.nn.Linear(5, 3)
    w, b = ref.weight.detach().clone(), ref.bias.detach().clone()
    for epoch in range(5):
        lr = 0.5 * (0.1 if epoch >= 3 else 1.0) * (0.1 if epoch >= 4 else 1.0)  # milestones int(3.0), int(4.0)
        for (x,), y, _ in batches:
            with torch.no_grad():
                f = backbone(x)
            w.requires_grad_(True), b.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(f @ w.T + b, y)
            gw, gb = torch.autograd.grad(loss, (w, b))
            w, b = (w - lr * gw).detach(), (b - lr * gb).detach()
    assert torch.allclose(head.weight, w, atol=1e-6) and torch.allclose(head.bias, b, atol=1e-6)
    with_momentum = ev.train_official_head(backbone, _Batches(batches), 5, 3, epochs=5, lr=0.5, momentum=0.9, seed=7)
    assert not torch.allclose(with_momentum.weight, w, atol=1e-4)  # the restatement tells momentum apart
    assert backbone.training  # eval mode during the fit, restored afterwards


def test_heatmap_with_std_annotations(tmp_path):
    import matplotlib.pyplot as plt

    matrix, std = [[50.0, 10.0], [40.0, 60.0]], [[1.0, 0.5], [0.2, 0.3]]
    fig = ev.heatmap_figure(matrix, std=std)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(["50.0\n±1.0", "10.0\n±0.5", "40.0\n±0.2",
                                                                      "60.0\n±0.3"])
    plt.close(fig)
    ev.save_heatmap(matrix, tmp_path / "h.png", std=std)
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("tasks", [1, 2, 5])
def test_heatmap_title_clears_the_colorbar_and_labels_fit(tasks, tmp_path):
    """The colorbar's top label ("100") sticks out above the axes: the title must sit above it, and every label
    (tick labels "after i", the title) must lie inside the figure."""
    import matplotlib.pyplot as plt

    matrix = [[80.0 + i - j if j <= i else float("nan") for j in range(tasks)] for i in range(tasks)]
    fig = ev.heatmap_figure(matrix)
    try:
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)
        ax, cax = fig.axes
        title = ax.title.get_window_extent(renderer)
        bar_labels = [t.get_window_extent(renderer) for t in cax.get_yticklabels() if t.get_text()]
        assert title.y0 >= max(b.y1 for b in bar_labels)
        texts = [ax.title, *ax.get_yticklabels(), *ax.get_xticklabels(), *cax.get_yticklabels()]
        for box in (t.get_window_extent(renderer) for t in texts if t.get_text()):
            assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    finally:
        plt.close(fig)
    ev.save_heatmap(matrix, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
