"""Continual metrics, kNN and the feature linear probe on constructed cases."""
from __future__ import annotations

import pytest
import torch

from fastpnr import evaluation as ev


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
