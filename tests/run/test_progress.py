"""The run's progress display: notices above the bar, evaluation time out of the ETA, per-epoch lines without a bar."""
from __future__ import annotations


from fastpnr.run.progress import TrainProgress


def test_without_a_bar_each_epoch_prints_one_line_with_loss_speed_elapsed_and_eta():
    lines = []
    p = TrainProgress(total_steps=8, done_steps=0, enabled=False, log=lines.append)
    p.end_epoch(task=0, num_tasks=2, epoch=0, epochs=2, steps=2, images=64, seconds=4.0, means={"loss": 1.5})
    p.status("evaluating task 0 (1/2): kNN")
    assert lines[0].startswith("task 0 (1/2) epoch 1/2 | loss 1.5000 | 16 img/s | elapsed ")
    assert lines[0].endswith("train ETA 0:00:12")  # 6 steps left at 2 s per training step
    assert lines[1] == "evaluating task 0 (1/2): kNN"


def test_task_labels_give_the_index_of_the_run_files_and_the_position():
    from fastpnr.run.progress import task_label

    assert [task_label(t, 3) for t in range(3)] == ["task 0 (1/3)", "task 1 (2/3)", "task 2 (3/3)"]


def test_with_a_bar_notices_go_through_tqdm_write(monkeypatch):
    from tqdm import std

    written = []
    monkeypatch.setattr(std.tqdm, "write", classmethod(lambda cls, s, *a, **k: written.append(s)))
    p = TrainProgress(total_steps=4, done_steps=0, enabled=True, log=print)
    try:
        p.log("cuda_graph: running the step eagerly")
        assert written == ["cuda_graph: running the step eagerly"]
        custom = []
        p.sink = custom.append  # a custom log: called while tqdm has cleared the bar
        p.log("after task 0")
        assert custom == ["after task 0"]
    finally:
        p.close()


def test_evaluation_time_stays_out_of_the_bar_rate_but_the_elapsed_clock_never_goes_back():
    p = TrainProgress(total_steps=20, done_steps=0, enabled=True, log=print)
    clock = {"t": 1000.0}
    p.bar._time = lambda: clock["t"]  # a fake clock: every time tqdm reads is exact
    p.bar.start_t = p.bar.last_print_t = clock["t"]
    try:
        elapsed = []
        for _ in range(5):  # 1 step per second
            clock["t"] += 1.0
            p.bar.update(1)
            elapsed.append(p.bar.format_dict["elapsed"])
        clock["t"] += 500.0  # the evaluation
        p.status("evaluating task 0 (1/2): kNN")
        elapsed.append(p.bar.format_dict["elapsed"])
        p.resume_training()
        for _ in range(2):
            clock["t"] += 1.0
            p.bar.update(1)
            elapsed.append(p.bar.format_dict["elapsed"])
        assert p.bar.format_dict["rate"] == 1.0  # steps over training seconds only (exact on the fake clock)
        assert elapsed == [1.0, 2.0, 3.0, 4.0, 5.0, 505.0, 506.0, 507.0]  # wall time since the start
        remaining = p.bar.format_meter(**p.bar.format_dict)
        assert "08:27<00:13" in remaining  # 13 steps left at 1 step/s
    finally:
        p.close()


def test_a_run_prints_its_log_above_its_bar_while_the_bar_is_up(monkeypatch, tmp_path, capsys):
    from tqdm import std

    from fastpnr.config import build_config
    from fastpnr.train.continual import ContinualRun

    written = []
    monkeypatch.setattr(std.tqdm, "write", classmethod(lambda cls, s, *a, **k: written.append(s)))
    run = ContinualRun(build_config("smoke", {"train.progress": True, "optim.epochs": 1}), tmp_path)
    run.steps, run.start_task, run.start_epoch, run.metrics = [2, 2], 0, 0, {}  # as fit() sets them
    run._open_display(None)  # what fit() does once the data and the model are ready
    run.log("cuda_graph: running the step eagerly")  # the Trainer and GraphStep get this log
    run._teardown()
    run.log("accuracy matrix")
    assert written == ["cuda_graph: running the step eagerly"]
    assert "accuracy matrix" in capsys.readouterr().out


def test_a_task_of_several_phases_names_the_phase_in_its_labels():
    from fastpnr.run.progress import position_label

    assert position_label(0, 2, 2, 4, phase="main") == "task 0 (1/2) epoch 3/4 (main)"
    assert position_label(1, 2, 0, 3, step=5, phase="expert") == "task 1 (2/2) epoch 1/3 (expert), after step 5"
    assert position_label(1, 2, 0, 3, step=5) == "task 1 (2/2) epoch 1/3, after step 5"
    lines = []
    p = TrainProgress(total_steps=8, done_steps=0, enabled=False, log=lines.append)
    p.end_epoch(task=0, num_tasks=2, epoch=0, epochs=4, steps=2, images=64, seconds=4.0, means={"loss": 1.5},
                phase="expert")
    assert lines[0].startswith("task 0 (1/2) epoch 1/4 (expert) | loss 1.5000 | ")
