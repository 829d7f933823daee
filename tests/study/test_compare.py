"""fastpnr compare: rows recomputed from each run's metrics.json (hand-worked values below), partial runs, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastpnr.cli import main as fastpnr
from fastpnr.study.compare import markdown_table, plot_curves, summarize

# after task 0: [80]; after 1: [60, 70]; after 2: [50, 65, 90]  (a[i][j], only j <= i filled for the example)
LINEAR = [[80.0, 10.0, 10.0], [60.0, 70.0, 10.0], [50.0, 65.0, 90.0]]
KNN = [[40.0, 0.0], [30.0, 50.0]]


def _run(root, name, matrices, proto="linear", num_tasks=3, random_init=None, method="simclr", reg="pnr"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "data": {"dataset": "cifar100", "scenario": "class", "num_tasks": num_tasks},
        "method": {"name": method}, "regularizer": {"name": reg}}))
    m = {"protocol": proto, "num_tasks": num_tasks, "matrices": matrices,
         "test_accuracy_by_protocol": {k: [sum(r) / len(r) for r in v] for k, v in matrices.items()},
         "images_per_second": [1000.0, 3000.0], "task_time_s": [60.0, 120.0]}
    if random_init:
        m["random_init_accuracy"] = random_init
    (folder / "metrics.json").write_text(json.dumps(m))
    return folder


def test_row_recomputes_average_accuracy_forgetting_and_forward_transfer(tmp_path):
    run = _run(tmp_path, "pnr", {"linear": LINEAR, "knn": KNN}, random_init={"linear": [20.0, 30.0, 40.0]})
    r = summarize(run)
    assert (r.method, r.regularizer, r.data, r.tasks, r.protocol) == ("simclr", "pnr", "cifar100/class", "3/3", "linear")
    assert r.final_avg_acc == pytest.approx((50 + 65 + 90) / 3)
    # A_0 = 80, A_1 = (60 + 70) / 2 = 65, A_2 = 205 / 3
    assert r.avg_inc_acc == pytest.approx((80 + 65 + 205 / 3) / 3)
    assert r.final_acc_std is None and r.final_avg_acc_std is None  # one probe fit: no spread
    # forgetting: task 0 max(80, 60) - 50 = 30; task 1 max(70) - 65 = 5 -> 17.5
    assert r.forgetting == pytest.approx(17.5)
    # forward transfer: a[0][1] - b_1 = 10 - 30 = -20; a[1][2] - b_2 = 10 - 40 = -30 -> -25
    assert r.fwd_transfer == pytest.approx(-25.0)
    assert r.final_acc == pytest.approx(205 / 3) and r.img_per_s == 2000.0 and r.train_min == pytest.approx(3.0)
    k = summarize(run, "knn")
    assert (k.tasks, k.final_avg_acc, k.forgetting, k.fwd_transfer) == ("2/3", 40.0, 10.0, None)


def test_spread_over_probe_fits_is_shown_as_plus_minus_std(tmp_path):
    fits = [[[80.0, 0.0], [60.0, 70.0]], [[82.0, 0.0], [64.0, 72.0]], [[78.0, 0.0], [62.0, 74.0]]]
    run = _run(tmp_path, "pnr", {"linear": np.mean(fits, 0).tolist()}, num_tasks=2)
    m = json.loads((run / "metrics.json").read_text())
    m["matrices_by_fit"] = {"linear": fits}
    m["test_accuracy_std_by_protocol"] = {"linear": [1.5, 2.5]}
    (run / "metrics.json").write_text(json.dumps(m))
    r = summarize(run)
    # A_T per fit: 65, 68, 68 -> sample std sqrt(3)
    assert r.final_avg_acc == pytest.approx(67.0) and r.final_avg_acc_std == pytest.approx(3 ** 0.5)
    assert r.final_acc_std == 2.5
    row = markdown_table([r]).splitlines()[2]
    assert "| 67.00 ± 1.73 |" in row and " ± 2.50 |" in row
    assert r.curve_std == (1.5, 2.5)
    plot_curves([r], tmp_path / "c.png")  # with error bars
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_table_file_outputs_and_plot(tmp_path, capsys):
    a = _run(tmp_path, "ft", {"linear": LINEAR[:2]}, reg="finetune")
    b = _run(tmp_path, "pnr", {"linear": LINEAR})
    fastpnr(["compare", str(a), str(b), "--out", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "c.png")])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| run | method | regularizer | data | tasks | protocol | final_acc | final_avg_acc | avg_inc_acc |")
    assert out[2].startswith("| ft | simclr | finetune | cifar100/class | 2/3 | linear |")
    assert out[3].startswith("| pnr | simclr | pnr | cifar100/class | 3/3 | linear | 68.33 | 68.33 | 71.11 | 17.50 | - | 2,000 |")
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0].startswith("run,method") and len(rows) == 3
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    fastpnr(["compare", str(b), "--out", str(tmp_path / "t.json")])
    assert json.loads((tmp_path / "t.json").read_text())[0]["curve"] == pytest.approx([100 / 3, 140 / 3, 205 / 3])


@pytest.mark.parametrize("args,needle", [
    (["nope"], "run folder 'nope' does not exist"),
    (["RUN", "--protocol", "probe"], "protocol='probe' is invalid; allowed: linear, knn, online, official"),
    (["RUN", "--protocol", "online"], "no 'online' accuracy matrix in metrics.json (protocols: knn, linear)"),
    (["RUN", "--out", "x.txt"], "out='x.txt' is invalid; allowed: a .md, .json or .csv path"),
    (["RUN", "--plot", "c.pdf"], "plot='c.pdf' is invalid; allowed: a .png path"),
    (["EMPTY"], "is not a fastpnr run folder: config.json is missing"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, needle):
    run = _run(tmp_path, "pnr", {"linear": LINEAR, "knn": KNN})
    (tmp_path / "empty").mkdir()
    args = [{"RUN": str(run), "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in args]
    with pytest.raises(SystemExit) as e:
        fastpnr(["compare", *args])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert e.value.code == 2 and needle in err and len(err.splitlines()) == 1
    if "--out" in args or "--plot" in args:
        assert captured.out == ""  # refused before any table is printed


def test_row_carries_incremental_accuracy_per_task_curves_and_the_matrix(tmp_path):
    r = summarize(_run(tmp_path, "pnr", {"linear": LINEAR}))
    # A_0 = 80, A_1 = (60 + 70) / 2 = 65, A_2 = (50 + 65 + 90) / 3; the unseen entries (10) never count
    assert r.acc_by_task == pytest.approx((80.0, 65.0, 205 / 3))
    assert r.avg_inc_acc == pytest.approx((80 + 65 + 205 / 3) / 3)
    assert r.forgetting_by_task == pytest.approx((30.0, 5.0)) and (r.tasks_done, r.num_tasks) == (3, 3)
    assert r.matrix[1] == (60.0, 70.0, 10.0)
