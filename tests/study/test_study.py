"""fastpnr study: cell commands, slots, cell states, the runner on a stand-in trainer, and real tiny studies (report,
no-op rerun, a killed cell resumed to the uninterrupted metrics)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from fastpnr.system import preempt
from fastpnr.study import runner as study
from fastpnr.study.cells import eta_s
from fastpnr.cli import main as fastpnr
from tests.conftest import tiny_overrides

FAKE = str(Path(__file__).with_name("fake_train.py"))
KILL = str(Path(__file__).with_name("kill_after_checkpoint.py"))
SIGNAL = str(Path(__file__).with_name("signal_at_step.py"))


def _cli(*args):
    return ["study", *[str(a) for a in args]]


def _report(out):
    return json.loads((out / "report.json").read_text())


@pytest.fixture
def fake_train(monkeypatch):
    monkeypatch.setattr(study, "launcher", lambda nproc, log_dir=None: [sys.executable, FAKE])
    monkeypatch.setattr(study, "POLL_S", 0.05)
    monkeypatch.delenv("FAKE_FAIL_METHOD", raising=False)
    return monkeypatch


# ------------------------------------------------------------------------------------------------ commands, slots
def test_torchrun_cell_command_and_gpu_slots():
    slots = study.make_slots((0, 1, 2, 3), nproc_per_cell=2, jobs=1)
    assert [s.gpus for s in slots] == [("0", "1"), ("2", "3")]
    assert slots[1].env({"A": "1"}) == {"A": "1", "CUDA_VISIBLE_DEVICES": "2,3"} and slots[1].devices == 2
    cell = study.Cell("byol-pnr-s6", "cifar100-5t", "byol", "pnr", 6)
    argv = study.cell_command(cell, Path("/s/byol-pnr-s6"), {"optim.lr": 0.5, "data_dir": "/d"}, slots[0], 2, False)
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "--log-dir=/s/byol-pnr-s6/torchrun", "-m", "fastpnr",
                    "train", "--preset", "cifar100-5t", "--out", "/s/byol-pnr-s6", "--optim.lr", "0.5", "--data_dir", "/d",
                    "--method", "byol", "--regularizer", "pnr", "--seed", "6", "--train.progress", "false"]
    one = study.make_slots("3", nproc_per_cell=1, jobs=1)
    assert study.cell_command(cell, Path("/c"), {}, one[0], 1, True) == [
        sys.executable, "-m", "fastpnr", "train", "--resume", "/c", "--train.progress", "false"]


def test_cpu_jobs_share_the_cores_and_values_become_cli_text():
    slots = study.make_slots(None, nproc_per_cell=1, jobs=2, cpu_count=8)
    assert [s.threads for s in slots] == [4, 4] and slots[0].env({}) == {"OMP_NUM_THREADS": "4"}
    gloo = study.make_slots(None, nproc_per_cell=2, jobs=2, cpu_count=8)  # 2 cells x 2 processes x 2 threads
    assert [(s.threads, s.procs, s.devices) for s in gloo] == [(2, 2, 4)] * 2
    assert gloo[0].describe() == "CPU, 2 processes x 2 threads"
    cell = study.Cell("c", "smoke", "simclr", "finetune", 5, scenario="data")
    shared = {"data.solarize_prob": [0.1, 0.2], "train.deterministic": True, "regularizer.neg_weight": 0.5}
    args = study.train_args(cell, Path("/c"), shared, slots[0], resume=False)
    assert "--regularizer.neg_weight" not in args  # fine-tuning has no such field; a PNR cell gets it
    pnr = study.Cell("p", "smoke", "simclr", "pnr", 5)
    assert study.train_args(pnr, Path("/p"), shared, slots[0], resume=False).count("--regularizer.neg_weight") == 1
    assert args[args.index("--data.solarize_prob") + 1] == "0.1,0.2" and args[args.index("--scenario") + 1] == "data"
    assert args[args.index("--train.deterministic") + 1] == "true" and args[-2:] == ["--train.threads", "4"]
    assert study.train_args(cell, Path("/c"), {"train.log_every": 5}, slots[0], resume=True) == [
        "train", "--resume", "/c", "--train.progress", "false", "--train.log_every", "5"]  # threads: the checkpoint's


def test_grid_names_order_and_known_cells_keep_their_names():
    cells = study.make_grid(["smoke"], None, ["simclr", "byol"], ["finetune", "pnr"], [5, 6])
    assert [c.name for c in cells[:4]] == ["simclr-finetune-s5", "simclr-pnr-s5", "byol-finetune-s5", "byol-pnr-s5"]
    two = study.make_grid(["smoke", "cifar10-5t"], ["class", "data"], ["simclr"], ["pnr"], [5], known=cells[:1])
    assert [c.name for c in two] == ["smoke-class-simclr-pnr-s5", "smoke-data-simclr-pnr-s5",
                                     "cifar10-5t-class-simclr-pnr-s5", "cifar10-5t-data-simclr-pnr-s5"]
    again = study.make_grid(["smoke", "cifar10-5t"], None, ["simclr"], ["finetune"], [5], known=cells)
    assert again[0].name == "simclr-finetune-s5"  # the same cell in a grid of two presets keeps its folder


def test_cell_state_running_with_a_dead_process_is_interrupted_or_pending(tmp_path):
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    folder = tmp_path / "c"
    folder.mkdir()
    record = {"status": "running", "pid": dead, "host": study.socket.gethostname(), "attempts": [{"start": 0.0}]}
    study.write_json(folder / study.CELL_FILE, record)
    assert study.read_state(folder).status == "pending"
    (folder / study.CHECKPOINT).write_bytes(b"x")
    assert study.read_state(folder).status == "interrupted"
    study.write_json(folder / study.CELL_FILE, {**record, "pid": os.getpid()})
    assert study.read_state(folder).status == "running"
    (folder / study.LOG_FILE).write_text("epoch 1\n")
    os.utime(folder / study.LOG_FILE, (30.0, 30.0))  # its last write: 30 s after the attempt started
    closed = study.close_orphan_attempt([{"start": 0.0}], folder / study.LOG_FILE)
    assert closed[0]["wall_s"] == 30.0 and closed[0]["returncode"] is None


def test_stopping_the_study_stops_its_running_cells_for_a_later_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "launcher", lambda nproc, log_dir=None: [sys.executable, "-c", "import time; time.sleep(120)"])
    cell = study.Cell("c", "smoke", "simclr", "finetune", 5)
    runner = study.StudyRunner(tmp_path, [cell], {}, [study.Slot(threads=1)], 1, log=lambda *a: None)
    running = runner._start(cell, runner.slots[0])
    assert study.read_state(tmp_path / "c").status == "running"
    previous = study.signal.getsignal(study.signal.SIGINT), study.signal.getsignal(study.signal.SIGTERM)
    runner._stop([running])  # what Ctrl-C or SIGTERM to the study does
    study.signal.signal(study.signal.SIGINT, previous[0])
    study.signal.signal(study.signal.SIGTERM, previous[1])
    state = study.read_state(tmp_path / "c")
    assert running.proc.returncode == -15 and state.record["status"] == "interrupted"
    assert state.status == "pending" and state.record["error"] == "stopped with the study"  # no checkpoint yet


def test_eta_from_the_mean_wall_time_of_finished_cells():
    done = study.CellState("done", record={"attempts": [{"wall_s": 100.0}]})
    done2 = study.CellState("done", record={"attempts": [{"wall_s": 60.0}, {"wall_s": 140.0}]})  # 200 over two attempts
    running = study.CellState("running", record={"attempts": [{"start": 1000.0}]})
    pending = study.CellState("pending")
    states = [done, done2, running, pending, pending]
    # mean 150 s per cell: running has 150 - 50 left, two pending 300; two slots -> 200 s
    assert eta_s(states, slots=2, now=1050.0) == pytest.approx(200.0)
    assert "2/5 done, 1 running, 0 failed, 2 to run" in study.progress_line(states, 2, 10.0, 1050.0)
    assert eta_s([pending], slots=1, now=0.0) is None


def test_eta_counts_the_steps_each_cell_has_left_at_the_measured_seconds_per_step(tmp_path):
    """Cells of different step counts (POCON's phases add epochs): the first cell's wall time is not every cell's."""
    cells = [study.Cell(f"c{i}", "smoke", "simclr", reg, 5 + i) for i, reg in
             enumerate(["finetune", "pocon", "pocon", "finetune", "pocon"])]
    done = study.CellState("done", 2, 2, {"attempts": [{"wall_s": 200.0}]}, (50, 50))  # 100 steps in 200 s: 2 s/step
    running = study.CellState("running", 0, 2, {"attempts": [{"start": 1000.0}]}, (150, 150))  # 300 steps, 100 s in
    interrupted = study.CellState("interrupted", 1, 2, {"attempts": [{"wall_s": 50.0}]}, (100, 300))  # 300 left
    pending = study.CellState("pending")
    states = [done, running, pending, pending, interrupted]
    # running 600 - 100 s; pending pocon as its siblings (300 and 400 steps) 700 s; pending finetune as its sibling
    # (100 steps) 200 s; interrupted 300 steps 600 s: 2000 s on two slots
    assert eta_s(states, slots=2, now=1100.0, cells=cells) == pytest.approx(1000.0)
    # without the cells every unknown count is the mean of the known ones, (100 + 300 + 400) / 3 steps
    assert eta_s(states, slots=1, now=1100.0) == pytest.approx(500 + 2 * 2 * 800 / 3 + 600)
    assert "ETA 0:16:40" in study.progress_line(states, 2, 10.0, 1100.0, cells)
    folder = tmp_path / "run"
    folder.mkdir()
    study.write_json(folder / "metrics.json", {"num_tasks": 2, "accuracy_matrix": [[50.0, 10.0]],
                                                "train_steps_by_task": [40, 60]})
    state = study.read_state(folder)
    assert (state.steps, state.steps_done) == (100, 40)


# ------------------------------------------------------------------------------------------------ the runner (stand-in trainer)
def test_grid_on_two_gpu_slots_failed_cell_reported_others_finish(fake_train, tmp_path, capsys):
    fake_train.setenv("FAKE_FAIL_METHOD", "byol")
    fake_train.setenv("FAKE_RENDEZVOUS_DIR", str(tmp_path / "rendezvous"))  # the first two cells wait for each other
    fake_train.setenv("FAKE_RENDEZVOUS_N", "2")
    out = tmp_path / "s"
    fastpnr(_cli("--methods", "simclr,byol", "--regularizers", "finetune,pnr", "--seeds", "5,6", "--out", out,
                 "--gpus", "0,1", "--optim.epochs", 3))
    printed = capsys.readouterr().out
    assert "[study] 4/8 done, 0 running, 4 failed, 0 to run" in printed and "failed cells: byol-finetune-s5" in printed
    report = _report(out)
    status = {c["name"]: c["status"] for c in report["cells"]}
    assert status == {f"{m}-{r}-s{s}": ("failed" if m == "byol" else "done")
                      for s in (5, 6) for m in ("simclr", "byol") for r in ("finetune", "pnr")}
    failed = next(c for c in report["cells"] if c["name"] == "byol-pnr-s6")
    assert failed["error"] == "error: boom in byol" and failed["metrics"] is None
    runs = [json.loads((out / c / "fake.json").read_text()) for c in status]
    assert {r["cuda"] for r in runs} == {"0", "1"}
    assert all(r["args"][r["args"].index("--optim.epochs") + 1] == "3" for r in runs)
    overlaps = sum(a["start"] < b["end"] and b["start"] < a["end"] for a in runs for b in runs if a is not b)
    assert overlaps > 0  # two slots: cells ran side by side
    assert (out / "report.md").read_text().count("| simclr | pnr | 2/2 |") == 1
    assert {p for p in report["plots"]} == {"accuracy_curves.png", "forgetting.png", "accuracy_matrices.png"}
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in report["plots"])


def test_table_mean_std_over_seeds_and_difference_to_finetune_by_hand(fake_train, tmp_path, capsys):
    out = tmp_path / "s"
    fastpnr(_cli("--methods", "simclr", "--regularizers", "finetune,pnr", "--seeds", "5,6", "--out", out))
    rows = {r["regularizer"]: r for r in _report(out)["table"]}
    ft, pnr = rows["finetune"]["metrics"], rows["pnr"]["metrics"]
    # finetune: b = 50, 60 -> A_T 55, 65: mean 60, sample std sqrt((25 + 25) / 1)
    assert ft["final_average_accuracy"]["mean"] == pytest.approx(60.0)
    assert ft["final_average_accuracy"]["std"] == pytest.approx(50 ** 0.5)
    # avg. inc. acc: mean of A_0 = b + 20 and A_1 = b + 5 -> b + 12.5; pnr's b = 60, 70
    assert pnr["average_incremental_accuracy"]["mean"] == pytest.approx(77.5)
    assert pnr["forgetting"]["mean"] == pytest.approx(20.0) and pnr["forgetting"]["std"] == pytest.approx(0.0)
    assert rows["pnr"]["diff_to_finetune"]["final_average_accuracy"] == pytest.approx(10.0)
    assert rows["finetune"]["diff_to_finetune"] is None and rows["pnr"]["img_per_s"] == pytest.approx(200.0)
    md = (out / "report.md").read_text()
    assert "| simclr | finetune | 2/2 | 60.00 ± 7.07 | 67.50 ± 7.07 | 20.00 ± 0.00 | - | 200.00 |" in md
    assert "| simclr | pnr | +10.00 | +10.00 | +0.00 | - |" in md
    # paired by seed: A_T 65 - 55 and 75 - 65; sd 0, so the 95% interval is the point
    paired = rows["pnr"]["paired_to_finetune"]["final_average_accuracy"]
    assert paired["by_seed"] == {"5": 10.0, "6": 10.0} or paired["by_seed"] == {5: 10.0, 6: 10.0}
    assert paired["ci"] == pytest.approx([10.0, 10.0]) and paired["n"] == 2
    assert "| simclr | pnr | Δ A_T | 5: +10.00, 6: +10.00 | +10.00 | [+10.00, +10.00] | 2 |" in md


def test_failed_cell_is_kept_until_retry_failed_and_changed_options_refused(fake_train, tmp_path, capsys):
    fake_train.setenv("FAKE_FAIL_METHOD", "simclr")
    out = tmp_path / "s"
    args = ("--methods", "simclr", "--regularizers", "finetune", "--out", out)
    fastpnr(_cli(*args))
    fake_train.delenv("FAKE_FAIL_METHOD")
    fastpnr(_cli(*args))  # without --retry-failed the failure stays
    assert study.read_state(out / "simclr-finetune-s5").status == "failed"
    fastpnr(_cli(*args, "--retry-failed"))
    state = study.read_state(out / "simclr-finetune-s5")
    assert state.status == "done" and [a["returncode"] for a in state.record["attempts"]] == [2, 0]
    assert (out / "simclr-finetune-s5" / "train.log").read_text().count("=== fastpnr study, attempt") == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        fastpnr(_cli(*args, "--optim.epochs", 2))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: --optim.epochs 2 differs from the study in")


@pytest.mark.parametrize("args,needle", [
    (["--methods", "simclrr"], "methods='simclrr' is invalid; allowed: barlow"),
    (["--regularizers", "ewc"], "regularizers='ewc' is invalid; allowed: cassle"),
    (["--seeds", "five"], "seeds='five' is invalid; allowed: a comma-separated list of int"),
    (["--method", "byol"], "option --method is set by the study grid; allowed: --methods (a list)"),
    (["--gpus", "0,1,2", "--nproc_per_cell", 2], "gpus=(0, 1, 2) is invalid; allowed: a multiple of --nproc_per_cell 2"),
    (["--nproc_per_cell", 0], "nproc_per_cell=0 is invalid; allowed: an integer >= 1"),
    (["--optim.lrr", 1], "optim.lrr is not a known option"),  # bad for every cell: refused before any run
    (["--regularizers", "finetune,cassle", "--regularizer.neg_weight", 1], "option='--regularizer.neg_weight' is invalid"),
])
def test_bad_input_is_one_line(fake_train, tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as e:
        fastpnr(_cli("--out", tmp_path / "s", *args))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and needle in err and len(err.splitlines()) == 1
    assert not any((tmp_path / "s").glob("*/cell.json"))


# ------------------------------------------------------------------------------------------------ real tiny studies
def _real_args(data_root, out, regularizers):
    extra = {"regularizer.distill_hidden": 32} if "pnr" in regularizers else {}  # finetune has no such option
    ov = tiny_overrides(data_root, **{"model.width": 8, "train.precision": "fp32", **extra})
    ov = {k: v for k, v in ov.items() if k not in ("train.progress", "train.log_every")}
    return _cli("--methods", "simclr", "--regularizers", regularizers, "--seeds", 5, "--out", out, "--jobs", 2,
                *[a for k, v in ov.items() for a in (f"--{k}", v)])


@pytest.fixture(scope="module")
def real_study(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    fastpnr(_real_args(data_root, out, "finetune,pnr"))
    return out


@pytest.mark.slow
def test_real_two_cell_study_writes_the_report_and_rerun_is_a_no_op(real_study, data_root, monkeypatch, capsys):
    report = _report(real_study)
    assert [(c["name"], c["status"], c["tasks"]) for c in report["cells"]] == [
        ("simclr-finetune-s5", "done", "2/2"), ("simclr-pnr-s5", "done", "2/2")]
    cfg = json.loads((real_study / "simclr-pnr-s5" / "config.json").read_text())
    assert cfg["model"]["width"] == 8 and cfg["regularizer"]["name"] == "pnr" and cfg["data"]["image_size"] == 16
    assert "after task 1" in (real_study / "simclr-pnr-s5" / "train.log").read_text()
    assert report["table"][1]["diff_to_finetune"] is not None and report["cells"][0]["cpu_hours"] > 0
    written = (real_study / "report.json").stat().st_mtime_ns

    def no_process(*a, **k):
        raise AssertionError("a finished study started a cell")

    monkeypatch.setattr(study.StudyRunner, "_start", no_process)
    fastpnr(_real_args(data_root, real_study, "finetune,pnr"))  # no_process: a started cell fails the test (no clock)
    assert "2 done, 0 to run" in capsys.readouterr().out
    assert (real_study / "report.json").stat().st_mtime_ns == written


@pytest.mark.slow
def test_real_cell_killed_mid_task_resumes_to_the_uninterrupted_metrics(real_study, data_root, monkeypatch, tmp_path,
                                                                         capsys):
    out = tmp_path / "s"
    monkeypatch.setattr(study, "launcher", lambda nproc, log_dir=None: [sys.executable, KILL])
    fastpnr(_real_args(data_root, out, "finetune"))
    state = study.read_state(out / "simclr-finetune-s5")
    assert state.status == "interrupted" and state.record["error"] == "killed by signal 9"
    assert state.tasks_done < 2 and (out / "simclr-finetune-s5" / study.CHECKPOINT).exists()
    monkeypatch.undo()
    fastpnr(_real_args(data_root, out, "finetune"))
    state = study.read_state(out / "simclr-finetune-s5")
    assert state.status == "done" and [a["mode"] for a in state.record["attempts"]] == ["fresh", "resume"]
    log = (out / "simclr-finetune-s5" / "train.log").read_text().splitlines()
    # killed right after the run's first checkpoint, the one written before its first step
    assert any(line.startswith("resumed from ") and line.endswith("checkpoint.pt: task 0 (1/2) epoch 1/1") for line in log)
    resumed = json.loads((out / "simclr-finetune-s5" / "metrics.json").read_text())
    uninterrupted = json.loads((real_study / "simclr-finetune-s5" / "metrics.json").read_text())
    assert resumed["matrices"] == uninterrupted["matrices"]
    assert "(1 resumed)" in capsys.readouterr().out


@pytest.mark.slow
def test_real_cell_under_torchrun_on_cpu_trains_on_two_processes(data_root, tmp_path, capsys):
    """--nproc_per_cell 2 without GPUs: the cell runs under torchrun, two gloo processes sharing the cores."""
    out = tmp_path / "s"
    args = _real_args(data_root, out, "finetune")
    args = [a for i, a in enumerate(args) if a != "--jobs" and (i == 0 or args[i - 1] != "--jobs")]
    fastpnr(args + ["--nproc_per_cell", "2"])
    state = study.read_state(out / "simclr-finetune-s5")
    assert state.status == "done", (out / "simclr-finetune-s5" / "train.log").read_text()[-2000:]
    attempt = state.record["attempts"][-1]
    assert "torch.distributed.run" in attempt["command"] and "--nproc_per_node=2" in attempt["command"]
    assert attempt["slot"].startswith("CPU, 2 processes x ")
    metrics = json.loads((out / "simclr-finetune-s5" / "metrics.json").read_text())
    assert metrics["world_size"] == [2, 2] and metrics["per_rank_batch_size"] == [8, 8]


@pytest.mark.slow
def test_real_cell_signalled_mid_epoch_checkpoints_at_the_step_and_resumes_to_the_same_metrics(
        real_study, data_root, monkeypatch, tmp_path, capsys):
    """SIGTERM during step 1 of task 0's epoch (2 steps): the checkpoint is written after that step (inside the
    epoch), the process exits EXIT_CHECKPOINTED (an interrupted cell, not a failure) and --resume trains step 2 on."""
    out = tmp_path / "s"
    monkeypatch.setattr(study, "launcher", lambda nproc, log_dir=None: [sys.executable, SIGNAL])
    monkeypatch.setenv("SIGNAL_AT_STEP", "1")
    fastpnr(_real_args(data_root, out, "finetune"))
    folder = out / "simclr-finetune-s5"
    state = study.read_state(folder)
    assert state.status == "interrupted" and state.record["attempts"][0]["returncode"] == preempt.EXIT_CHECKPOINTED
    assert state.record["error"] == "stopped by a signal after its checkpoint"
    assert "stopped by SIGTERM: checkpoint at task 0 (1/2) epoch 1/1, after step 1; resume" in (folder / "train.log").read_text()
    ckpt = torch.load(folder / study.CHECKPOINT, weights_only=False)
    assert (ckpt["next_task"], ckpt["next_epoch"], ckpt["next_step"]) == (0, 0, 1)
    monkeypatch.undo()
    fastpnr(_real_args(data_root, out, "finetune"))
    state = study.read_state(folder)
    assert state.status == "done" and [a["mode"] for a in state.record["attempts"]] == ["fresh", "resume"]
    log = (folder / "train.log").read_text().splitlines()
    assert any(line.startswith("resumed from ") and line.endswith("checkpoint.pt: task 0 (1/2) epoch 1/1, after step 1")
               for line in log)
    resumed = json.loads((folder / "metrics.json").read_text())
    uninterrupted = json.loads((real_study / "simclr-finetune-s5" / "metrics.json").read_text())
    assert resumed["matrices"] == uninterrupted["matrices"]
