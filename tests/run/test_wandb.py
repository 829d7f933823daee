"""Weights & Biases logging (`--train.wandb PROJECT`), checked offline from the files wandb writes: the TensorBoard
scalars, the config, the heatmap after each task, the final metrics, a study's group, the same run id after a kill
and resume; without wandb, one line at validation."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastpnr.study import runner as study
from fastpnr.config import build_config
from fastpnr.train.continual import ContinualRun, resume_run
from fastpnr.errors import ConfigError
from fastpnr.run.wandb_log import has_login, resolve_mode
from tests.conftest import tiny_overrides

KILLER = Path(__file__).parents[1] / "study" / "kill_after_checkpoint.py"
ROOT = Path(__file__).parents[2]


def quiet(*_a, **_k):
    pass


def _needs_wandb():
    return pytest.importorskip("wandb", reason="wandb not installed (pip install fastpnr[wandb])")


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    """An environment without W&B credentials or mode: train.wandb_mode auto must choose offline."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))  # wandb's settings, not the user's


def _tensorboard_scalars(folder: Path) -> dict:
    """{(tag, step): value} of every scalar in a run's tb/ event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    out = {}
    for file in sorted(folder.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(file)).Load():
            for v in event.summary.value:
                out[(v.tag, event.step)] = v.simple_value if v.HasField("simple_value") else float(
                    tensor_util.make_ndarray(v.tensor))
    return out


def _wandb_scalars(run) -> dict:
    """{(tag, step): value} of the wandb history, each tag against its step metric."""
    out = {}
    for row in run.history:
        for tag, value in row.items():
            if tag.startswith(("train/", "eval/")) and not tag.startswith("eval/accuracy_matrix/"):  # not the image
                axis = "task" if tag.startswith("eval/") else "global_step"
                out[(tag, row[axis])] = value
    return out


def test_wandb_without_the_package_is_one_line_at_validation(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        build_config("smoke", {"train.wandb": "myproject"})
    assert "install fastpnr[wandb] (pip install wandb)" in str(e.value) and "\n" not in str(e.value)
    assert build_config("smoke", {}).train.wandb == ""  # off: nothing to install


def test_auto_mode_is_offline_without_a_login_and_online_with_one(tmp_path):
    netrc = tmp_path / "netrc"
    assert resolve_mode("auto", {"NETRC": str(netrc)}) == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password k" + "0" * 39 + "\n")
    netrc.chmod(0o600)
    assert has_login({"NETRC": str(netrc)}) and resolve_mode("auto", {"NETRC": str(netrc)}) == "online"
    assert not has_login({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"})  # another host
    assert resolve_mode("auto", {"NETRC": str(tmp_path / "none"), "WANDB_API_KEY": "x"}) == "online"
    assert resolve_mode("auto", {"WANDB_MODE": "disabled", "WANDB_API_KEY": "x"}) == "disabled"  # the user's WANDB_MODE
    assert resolve_mode("auto", {"WANDB_MODE": "dryrun"}) == "offline"
    assert resolve_mode("offline", {"WANDB_API_KEY": "x"}) == "offline"


def test_study_cells_are_grouped_by_study():
    cell = study.Cell("simclr-pnr-s5", "smoke", "simclr", "pnr", 5)
    slot = study.Slot(threads=1)
    args = study.train_args(cell, Path("/studies/grid1/simclr-pnr-s5"), {"train.wandb": "p"}, slot, resume=False)
    assert args[args.index("--train.wandb_group") + 1] == "grid1"
    mine = study.train_args(cell, Path("/s/g/c"), {"train.wandb": "p", "train.wandb_group": "mine"}, slot, False)
    assert mine.count("--train.wandb_group") == 1 and mine[mine.index("--train.wandb_group") + 1] == "mine"
    assert "--train.wandb_group" not in study.train_args(cell, Path("/s/g/c"), {}, slot, resume=False)


def test_offline_run_logs_the_tensorboard_scalars_config_heatmaps_and_final_metrics(data_root, tmp_path, no_login):
    _needs_wandb()
    from tests.run.wandb_records import offline_runs

    cfg = build_config("smoke", tiny_overrides(data_root, **{"regularizer.distill_hidden": 32, "train.wandb": "fastpnr-t",
                                                             "train.wandb_group": "grid1"}))
    out = tmp_path / "run"
    ContinualRun(cfg, out, log=quiet).fit()
    (run,) = offline_runs(out / "wandb")  # auto mode, no login: offline, in the run folder
    assert run.finished and run.project == "fastpnr-t" and run.group == "grid1"
    assert [r.exit.exit_code for r in run.records if r.WhichOneof("record_type") == "exit"] == [0]
    assert run.config["train"] == json.loads((out / "config.json").read_text())["train"]
    assert {k: v for k, v in run.config.items() if not k.startswith("_")} == json.loads((out / "config.json").read_text())

    tb, wb = _tensorboard_scalars(out / "tb"), _wandb_scalars(run)
    assert set(wb) == set(tb) and len(tb) > 10
    for key, value in tb.items():  # TensorBoard stores float32: rounding 6e-8 relative
        assert wb[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key

    heatmaps = [row for row in run.history if "eval/accuracy_matrix/path" in row]
    assert [row["task"] for row in heatmaps] == [0, 1]
    for row in heatmaps:
        assert (run.folder / "files" / row["eval/accuracy_matrix/path"]).is_file()
    assert heatmaps[-1]["eval/accuracy_matrix/sha256"] == hashlib.sha256((out / "accuracy_matrix.png").read_bytes()).hexdigest()

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("final_average_accuracy", "forgetting", "average_incremental_accuracy", "accuracy_matrix", "test_accuracy"):
        assert run.summary[key] == metrics[key], key  # both JSON of the same float64s
    assert run.summary["tasks_done"] == 2
    assert torch_checkpoint(out)["wandb_id"] == run.run_id


def _own_wandb_service_env() -> dict:
    """The environment of a train process that starts its own wandb service: an earlier test's wandb.init left
    WANDB_SERVICE (this process's service) in os.environ, and a child connecting to it would register its run id
    there, still in use after the child is killed."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return env


def torch_checkpoint(out: Path) -> dict:
    import torch

    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_a_killed_and_resumed_run_continues_the_same_wandb_run(data_root, tmp_path, no_login, monkeypatch):
    _needs_wandb()
    from tests.run.wandb_records import offline_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    out = tmp_path / "run"
    ov = tiny_overrides(data_root, **{"regularizer.distill_hidden": 32, "train.wandb": "fastpnr-t", "optim.epochs": 2})
    killed = subprocess.run([sys.executable, str(KILLER), "train", "--preset", "smoke", "--out", str(out),
                             *study.cli_args(ov)], capture_output=True, text=True, timeout=600,
                            env=_own_wandb_service_env())
    assert killed.returncode == -9, killed.stderr[-2000:]
    first_id = torch_checkpoint(out)["wandb_id"]
    assert first_id and not (out / "metrics.json").exists()

    resume_run(out, log=quiet)
    runs = offline_runs(tmp_path / "wb", finished=1)  # the killed run has no exit record
    assert [r.run_id for r in runs] == [first_id, first_id]  # the killed process's wandb run, then the same id again
    assert runs[1].finished and runs[1].summary["tasks_done"] == 2
    assert torch_checkpoint(out)["wandb_id"] == first_id


def test_a_run_that_fails_finishes_its_wandb_run_with_exit_code_1(tmp_path, no_login):
    _needs_wandb()
    from fastpnr.run.wandb_log import WandbLog
    from tests.run.wandb_records import offline_runs

    cfg = build_config("smoke", {"train.wandb": "fastpnr-t"})
    log = WandbLog(cfg, tmp_path)
    log.scalar("train/loss", 1.5, 3)
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("a step failed")
        finally:
            log.close()
    (run,) = offline_runs(tmp_path / "wandb")
    exits = [r.exit for r in run.records if r.WhichOneof("record_type") == "exit"]
    assert exits[0].exit_code == 1 and run.series("train/loss", "global_step") == {3: 1.5}


def test_overwrite_removes_the_wandb_folder_and_a_resume_may_change_the_wandb_fields(tmp_path):
    _needs_wandb()  # the resume check validates train.wandb, which needs the package
    from fastpnr.run.folder import check_new_run_folder, check_resume_changes, config_changes

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "wandb" / "offline-run-x").mkdir(parents=True)
    (tmp_path / "mine.txt").write_text("kept")
    check_new_run_folder(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    old = build_config("smoke", {}).to_dict()
    new = build_config("smoke", {"train.wandb": "p", "train.wandb_group": "g", "train.wandb_mode": "offline"}).to_dict()
    assert check_resume_changes(config_changes(old, new), allow=False) == {}
