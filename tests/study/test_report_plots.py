"""The study report's figures, drawn from report.json entries: a colour bar and the protocol on the matrices, an
unfinished cell's panel that says so, error bars only over several seeds, y-axes that do not blow up small gaps."""
from __future__ import annotations

import pytest

from fastpnr.study.compare import MIN_SPAN, honest_ylim
from fastpnr.study.report import curves_figure, matrices_figure

pytest.importorskip("matplotlib")


def entry(method: str, reg: str, seed: int, matrix=None, status: str = "done") -> dict:
    """A cell of report.json as ``study_report.cell_entry`` writes it (2 tasks)."""
    e = {"name": f"{method}-{reg}-s{seed}", "preset": "smoke", "scenario": None, "method": method,
         "regularizer": reg, "seed": seed, "status": status, "metrics": None}
    if status == "done":
        e.update(metrics={"protocol": "knn"}, accuracy_matrix=matrix,
                 accuracy_after_task=[matrix[0][0], sum(matrix[1]) / 2],
                 forgetting_by_task=[matrix[0][0] - matrix[1][0]])
    return e


@pytest.fixture
def closing():
    import matplotlib.pyplot as plt

    figs = []
    yield figs.append
    for f in figs:
        plt.close(f)


def test_matrices_have_one_colour_bar_the_protocol_and_a_not_finished_panel(closing):
    group = [entry("simclr", "finetune", 5, [[70, 20], [50, 60]]), entry("simclr", "pnr", 5, status="running"),
             entry("simclr", "pnr", 6, status="failed")]
    fig = matrices_figure(group)
    closing(fig)
    assert len(fig.axes) == 2 + 1  # two panels and the colour bar
    bar = fig.axes[-1]
    assert bar.get_ylabel() == "accuracy (%)" and bar.get_ylim() == (0.0, 100.0)
    assert "knn protocol" in fig._suptitle.get_text()
    unfinished = fig.axes[1]
    assert unfinished.get_title() == "simclr + pnr" and not unfinished.images
    assert [t.get_text() for t in unfinished.texts] == ["not finished\n(1 running, 1 failed)"]
    assert fig.axes[0].get_title() == "simclr + finetune (n=1)" and len(fig.axes[0].texts) == 4  # the values


def test_accuracy_curves_keep_a_small_gap_small_and_show_error_bars_over_seeds(closing):
    # one seed each, A_k 1.8 points apart (what looked large on an axis zoomed to the data)
    one = [entry("simclr", "finetune", 5, [[71.0, 0.0], [60.0, 50.0]]),
           entry("simclr", "pnr", 5, [[72.8, 0.0], [61.8, 50.0]])]
    fig = curves_figure(one, "accuracy_curves")
    closing(fig)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert high - low >= MIN_SPAN and low <= 55.0 and high >= 72.8
    assert "A_k" in ax.get_ylabel() and "knn protocol" in fig._suptitle.get_text()
    assert [c.has_yerr for c in ax.containers] == [False, False]  # n = 1: no spread to show
    two = one + [entry("simclr", "finetune", 6, [[75.0, 0.0], [64.0, 50.0]])]
    fig = curves_figure(two, "accuracy_curves")
    closing(fig)
    assert [c.has_yerr for c in fig.axes[0].containers] == [True, False]  # finetune n = 2, pnr n = 1


def test_forgetting_of_few_tasks_includes_zero_and_says_what_negative_means(closing):
    # accuracy on task 0 rose by 1.37 and 1.96 points: forgetting -1.37 and -1.96
    group = [entry("simclr", "finetune", 5, [[50.0, 10.0], [51.37, 60.0]]),
             entry("simclr", "pnr", 5, [[50.0, 10.0], [51.96, 60.0]])]
    fig = curves_figure(group, "forgetting")
    closing(fig)
    low, high = fig.axes[0].get_ylim()
    assert low <= -1.96 and high >= 0.0 and high - low >= MIN_SPAN
    assert any("below 0: the accuracy rose" in t.get_text() for t in fig.texts)
    xs = [c.lines[0].get_xdata()[0] for c in fig.axes[0].containers]
    assert xs[0] != xs[1]  # equal values of two strategies are drawn side by side, not on top of each other


def test_honest_ylim_widens_about_the_middle_inside_the_bounds():
    assert honest_ylim([60.0, 61.8]) == pytest.approx((60.9 - MIN_SPAN / 2, 60.9 + MIN_SPAN / 2))
    assert honest_ylim([98.0, 99.5]) == (100.0 - MIN_SPAN, 100.0)  # pushed down from the top, not cut
    assert honest_ylim([1.0]) == (0.0, MIN_SPAN)
    low, high = honest_ylim([10.0, 90.0])  # a wide range keeps its margin
    assert low == pytest.approx(10.0 - 0.08 * 80) and high == pytest.approx(90.0 + 0.08 * 80)
    assert honest_ylim([-1.96, -1.37], include_zero=True, bounds=(-100.0, 100.0)) == pytest.approx((-10.98, 9.02))
    assert honest_ylim([]) == (0.0, 100.0)
