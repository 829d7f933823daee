"""The run folder: one run per folder (--overwrite), what --resume accepts and may change, checkpoint before the
evaluation, TensorBoard scalars without duplicates after a resume."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from fastpnr.config import build_config
from fastpnr.train.continual import ContinualRun, resume_run
from fastpnr.errors import ConfigError, DataError
from fastpnr.run.folder import (RESUME_SAFE, NewRunFiles, check_new_run_folder, check_resume_changes,
                                config_changes, resume_folder)
from tests.conftest import tiny_overrides


def quiet(*_a, **_k):
    pass


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _fake_run(folder):
    """The files of a run, plus files of the user's own."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tasks.json", "tasks_indices.npz", "metrics.json", "accuracy_matrix.csv", "checkpoint.pt", "task0.pt",
                 "task1.pt", ".checkpoint.pt.abc12345.tmp", ".metrics.json.0123abcd.tmp"):  # two atomic writes cut short
        (folder / name).write_text("x")
    (folder / ".notes.txt.0123abcd.tmp").write_text("mine")  # a temporary file, but not of a file fastpnr writes
    (folder / "tb").mkdir()
    (folder / "tb" / "events.out.tfevents.1").write_text("x")
    (folder / "notes.txt").write_text("mine")
    (folder / "task_notes.pt").write_text("mine")
    (folder / "mine").mkdir()
    (folder / "mine" / "checkpoint.pt").write_text("mine")


def test_new_run_refuses_a_folder_holding_a_run_and_overwrite_deletes_only_run_files(tmp_path):
    check_new_run_folder(tmp_path / "missing", overwrite=False)  # nonexistent: fine
    (tmp_path / "empty").mkdir()
    check_new_run_folder(tmp_path / "empty", overwrite=False)  # empty: fine
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    check_new_run_folder(tmp_path / "user", overwrite=False)  # no run files: fine
    run = tmp_path / "run"
    _fake_run(run)
    with pytest.raises(ConfigError) as e:
        check_new_run_folder(run, overwrite=False)
    msg = _one_line(e)
    assert "already holds a run" in msg and f"--resume {run}" in msg and "--overwrite" in msg
    assert (run / "checkpoint.pt").exists()  # refused: nothing deleted
    check_new_run_folder(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [".notes.txt.0123abcd.tmp", "mine", "notes.txt", "task_notes.pt"]
    assert (run / "mine" / "checkpoint.pt").read_text() == "mine"


def test_new_run_files_removes_what_the_run_made_and_nothing_that_was_there(tmp_path):
    nested = tmp_path / "runs" / "a" / "x"  # runs/ does not exist: the run makes three folders
    made = NewRunFiles(nested)
    _fake_run(nested)
    made.remove()
    assert sorted(p.name for p in nested.iterdir()) == [".notes.txt.0123abcd.tmp", "mine", "notes.txt",
                                                         "task_notes.pt"]  # the user's stay
    for p in (".notes.txt.0123abcd.tmp", "mine/checkpoint.pt", "mine", "notes.txt", "task_notes.pt"):
        (nested / p).unlink() if (nested / p).is_file() else (nested / p).rmdir()
    made.remove()  # empty now: the folders it made go, up to the first that existed
    assert list(tmp_path.iterdir()) == []

    mine = tmp_path / "mine"  # a folder of the user's, holding a file fastpnr writes too (not from this run)
    mine.mkdir()
    (mine / "tasks.json").write_text("theirs")
    made = NewRunFiles(mine)
    (mine / "config.json").write_text("x")
    (mine / "tb").mkdir()
    made.remove()
    assert [p.name for p in mine.iterdir()] == ["tasks.json"] and (mine / "tasks.json").read_text() == "theirs"
    NewRunFiles(tmp_path / "never" / "made").remove()  # a run that failed before making its folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_continual_run_refuses_a_used_folder_before_loading_data(tmp_path):
    (tmp_path / "checkpoint.pt").write_text("x")
    cfg = build_config("smoke", {"data.data_dir": str(tmp_path / "no-data"), "train.progress": False})
    with pytest.raises(ConfigError, match="already holds a run"):
        ContinualRun(cfg, tmp_path, log=quiet).fit()  # a data error would come first if data were loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("overrides, field", [
    ({"method": "mocov2plus", "method.queue_size": 1000, "optim.batch_size": 32}, "method.queue_size=1000"),
    ({"method": "mocov2plus", "method.queue_size": 16, "optim.batch_size": 32}, "method.queue_size=16"),
    ({"method": "mocov2plus", "regularizer": "pnr", "regularizer.frozen_queue_size": 100, "optim.batch_size": 32},
     "regularizer.frozen_queue_size=100"),
    ({"method": "vicreg", "regularizer": "pnr", "regularizer.neg_weight": 25.0, "regularizer.pos_weight": 25.0},
     "regularizer.neg_weight=25.0"),
])
def test_method_regularizer_combinations_are_refused_when_the_config_is_built(overrides, field):
    from fastpnr.config import config_from_dict

    with pytest.raises(ConfigError) as e:
        build_config("smoke", overrides)
    msg = _one_line(e)
    assert msg.startswith(field) and "allowed:" in msg
    # the same check when a configuration comes back from a checkpoint
    ok = {k: v for k, v in overrides.items() if k in ("method", "regularizer")}
    d = build_config("smoke", ok).to_dict()
    section, name = field.split("=")[0].split(".")
    d[section][name] = overrides[f"{section}.{name}"]
    d["optim"]["batch_size"] = overrides.get("optim.batch_size", d["optim"]["batch_size"])
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config_from_dict(d)


def test_moco_queues_that_hold_whole_batches_are_accepted():
    cfg = build_config("smoke", {"method": "mocov2plus", "method.queue_size": 96, "optim.batch_size": 32,
                                 "regularizer.frozen_queue_size": 32})
    assert (cfg.method.queue_size, cfg.regularizer.frozen_queue_size) == (96, 32)


def test_resume_accepts_a_run_folder_or_its_checkpoint_and_explains_a_task_model(tmp_path):
    (tmp_path / "checkpoint.pt").write_text("x")
    (tmp_path / "task0.pt").write_text("x")
    assert resume_folder(tmp_path) == tmp_path
    assert resume_folder(tmp_path / "checkpoint.pt") == tmp_path
    with pytest.raises(DataError) as e:
        resume_folder(tmp_path / "task0.pt")
    msg = _one_line(e)
    assert "model saved after a task" in msg and "not a resumable checkpoint" in msg and "task0.pt/" not in msg
    assert f"--resume {tmp_path}" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no checkpoint.pt"):
        resume_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="no such folder or file"):
        resume_folder(tmp_path / "none")


def test_a_truncated_checkpoint_is_named_as_truncated_with_the_copies_that_may_serve(tmp_path, capsys):
    from fastpnr.cli import main as fastpnr

    for name in ("checkpoint.pt", "task0.pt", "task1.pt"):
        torch.save({"config": build_config("smoke", {}).to_dict(), "method": {"w": torch.randn(64, 64)}}, tmp_path / name)
    whole = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(whole[: len(whole) // 2])  # an interrupted copy
    with pytest.raises(DataError) as e:
        resume_run(tmp_path, log=quiet)
    msg = _one_line(e)
    assert msg.startswith(f"checkpoint {tmp_path / 'checkpoint.pt'} is truncated or corrupt ({len(whole) // 2} bytes")
    assert "task{t}.pt, the model after task t, may serve (here: task1.pt, task0.pt)" in msg
    assert "earlier copy of checkpoint.pt" in msg and len(msg) < 400  # not torch's paragraph
    (tmp_path / "task1.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        fastpnr(["linear", str(tmp_path / "task1.pt")])
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "task1.pt is truncated or corrupt (0 bytes" in err and "here: task0.pt" in err


def test_resume_config_changes_only_the_safe_ones_pass_unless_allowed():
    old = build_config("smoke", {}).to_dict()
    new = build_config("smoke", {"train.progress": False, "train.log_every": 3, "data.data_dir": "/elsewhere",
                                 "train.threads": 2, "optim.lr": 0.1}).to_dict()
    changes = config_changes(old, new)
    assert set(changes) == {"train.progress", "train.log_every", "data.data_dir", "train.threads", "optim.lr"}
    assert changes["train.threads"] == (None, 2)
    with pytest.raises(ConfigError) as e:
        check_resume_changes(changes, allow=False)
    msg = _one_line(e)
    assert "train.threads None -> 2" in msg and "optim.lr 0.6 -> 0.1" in msg and "--allow-config-change" in msg
    assert "train.progress True" not in msg
    assert set(check_resume_changes(changes, allow=True)) == {"train.threads", "optim.lr"}
    safe = {k: v for k, v in changes.items() if k in RESUME_SAFE}
    assert check_resume_changes(safe, allow=False) == {}


def _events(tb_dir) -> Counter:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # purge_orphaned_data=False: report what the files hold, not what TensorBoard's own clean-up would show
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    return Counter((tag, e.step) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag))


class _Kill(Exception):
    pass


@pytest.mark.slow
def test_killed_twice_then_resumed_run_has_each_tensorboard_step_once(data_root, tmp_path, monkeypatch):
    """Kill 1 mid-epoch (step 1 logged after the start checkpoint), kill 2 while task 0's results are saved (its
    evaluation scalars written); each resume replays those, and each (tag, step) must still appear once."""
    import fastpnr.train.continual as continual
    from fastpnr.train.trainer import Trainer
    from scripts.train import main

    out = tmp_path / "run"
    ov = tiny_overrides(data_root, **{"optim.epochs": 1, "eval.forward_transfer": False})
    real_step, real_save = Trainer.run_step, continual.atomic_save
    calls = {"n": 0}

    def step_then_kill(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Kill()
        return real_step(self, *a, **k)

    monkeypatch.setattr(Trainer, "run_step", step_then_kill)
    with pytest.raises(_Kill):
        ContinualRun(build_config("smoke", ov), out, log=quiet).fit()
    monkeypatch.setattr(Trainer, "run_step", real_step)

    def kill_at_task_model(obj, path):
        if path.name == "task0.pt":
            raise _Kill()
        real_save(obj, path)

    monkeypatch.setattr(continual, "atomic_save", kill_at_task_model)
    with pytest.raises(_Kill):  # the command line's override syntax, a safe change
        main(resume=str(out), **{"train.progress": "false"})
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (ckpt["next_task"], ckpt["phase"]) == (0, "evaluate")  # task 0 trained, its evaluation next
    monkeypatch.setattr(continual, "atomic_save", real_save)

    with pytest.raises(ConfigError, match=r"eval\.knn_k 20 -> 5"):
        resume_run(out, {"eval.knn_k": 5}, log=quiet)
    metrics = resume_run(out / "checkpoint.pt", {"eval.knn_k": 5}, allow_config_change=True, log=quiet)
    assert len(metrics["accuracy_matrix"]) == 2
    events = _events(out / "tb")
    assert [k for k, n in events.items() if n > 1] == []
    assert sorted(s for t, s in events if t == "train/loss") == [1, 2, 3, 4]
    assert sorted(s for t, s in events if t == "eval/linear_test_accuracy") == [0, 1]
    recorded = json.loads((out / "metrics.json").read_text())["resume_config_changes"]
    assert recorded == [{"task": 0, "epoch": 1, "phase": "evaluate", "changes": {"eval.knn_k": [20, 5]}}]


def test_the_run_files_name_the_split_file_that_task_data_writes():
    # run/folder.py names tasks_indices.npz literally (importing the data room would load torch before --out is checked)
    from fastpnr.data.task_data import TASK_INDICES
    from fastpnr.run.folder import RUN_FILES

    assert TASK_INDICES in RUN_FILES
