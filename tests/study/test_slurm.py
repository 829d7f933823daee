"""fastpnr study --executor slurm: options and their sbatch mapping, the torchrun rendezvous, bad input; and studies
submitted to a real one-node Slurm cluster (tests/study/conftest.py): a stand-in trainer's failing cell reported
beside a finished one, attach instead of a second submission; a real 2-cell study identical to the same study run
locally; a cell requeued (``scontrol requeue``) mid-task resumed to the uninterrupted metrics."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from fastpnr.study import slurm, runner as study
from fastpnr.cli import main as fastpnr
from tests.conftest import tiny_overrides

HERE = Path(__file__).parent
FAKE, PAUSE = str(HERE / "fake_train.py"), str(HERE / "pause_at_step.py")
DONE_WITHIN_S = 1800  # a bound for a hung cluster only: tiny cells end in minutes even on a loaded 2-core machine


def _cli(*args):
    return ["study", *[str(a) for a in args]]


def _bad_input(capsys, args) -> str:
    with pytest.raises(SystemExit) as e:
        fastpnr(_cli(*args))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------------------------ no cluster needed
def test_time_formats_and_the_sbatch_parameters_of_each_option():
    assert [slurm.time_seconds(t) for t in ("90", 90, "5:30", "2:00:00", "1-2", "1-2:03", "1-2:03:04")] == [
        5400, 5400, 330, 7200, 93600, 93780, 93784]
    opts, rest = slurm.slurm_options({"slurm.partition": "gpu", "slurm.time": "1:00:30", "slurm.gpus_per_cell": 8,
                                      "slurm.nodes": 2, "slurm.cpus_per_cell": 16, "slurm.mem": "64G",
                                      "slurm.account": "lab", "slurm.qos": "high", "optim.lr": 0.1,
                                      "slurm.extra": "--constraint=a100 --exclusive --comment 'a b'"})
    assert rest == {"optim.lr": 0.1}
    assert slurm.sbatch_parameters(opts, "fastpnr-x") == {
        "job_name": "fastpnr-x", "time": 61, "nodes": 2, "ntasks_per_node": 1, "cpus_per_task": 16,
        "signal_delay_s": slurm.SIGNAL_DELAY_S, "stderr_to_stdout": True, "gpus_per_node": 4, "partition": "gpu",
        "mem": "64G", "account": "lab", "qos": "high",
        "additional_parameters": {"requeue": True, "constraint": "a100", "exclusive": True, "comment": "a b"}}


def test_a_cell_on_several_nodes_runs_torchrun_with_the_rendezvous_from_slurm():
    env = {"SLURM_JOB_ID": "1234", "SLURM_NODEID": "1"}
    argv = slurm.slurm_launcher(4, 2, env, ["gpu7", "gpu8"], Path("/s/c/torchrun"))
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=4", "--node_rank=1",
                    "--rdzv_backend=c10d", f"--rdzv_endpoint=gpu7:{29500 + 1234}", "--rdzv_id=fastpnr-1234",
                    "--log-dir=/s/c/torchrun", "-m", "fastpnr"]
    assert slurm.slurm_launcher(2, 1, env, ["gpu7"], Path("/l"))[:5] == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert slurm.job_slot({"CUDA_VISIBLE_DEVICES": "2,3"}, 2, 8, 2).gpus == ("2", "3")
    assert slurm.job_slot({}, 0, 4, 2).threads == 2
    assert slurm.job_id({"SLURM_JOB_ID": "20", "SLURM_ARRAY_JOB_ID": "19", "SLURM_ARRAY_TASK_ID": "1"}) == "19_1"


@pytest.mark.parametrize("args,needle", [
    (["--slurm.time", "soon"], "slurm.time='soon' is invalid; allowed: MINUTES, H:MM:SS"),
    (["--slurm.gpus_per_cell", 3, "--slurm.nodes", 2], "slurm.gpus_per_cell=3 is invalid; allowed: a multiple of"),
    (["--slurm.mem", "lots"], "slurm.mem='lots' is invalid"),
    (["--slurm.extra=--time=5"], "--time is --slurm.time"),
    (["--slurm.extra=--array=0-3 --exclusive"], "--array is set by fastpnr"),
    (["--slurm.extra", "--exclusive"], "slurm.extra=True is invalid; allowed: sbatch options as one value, with '='"),
    (["--slurm.cpus", 2], "option='--slurm.cpus' is invalid; allowed: --slurm.partition"),
    (["--gpus", "0,1"], "gpus=(0, 1) is invalid; allowed: unset with --executor slurm"),
])
def test_bad_slurm_options_are_one_line(tmp_path, capsys, args, needle):
    err = _bad_input(capsys, ["--out", tmp_path / "s", "--executor", "slurm", *args])
    assert needle in err and not (tmp_path / "s").exists()


def test_slurm_options_without_the_slurm_executor_and_a_missing_submitit_or_sbatch(tmp_path, capsys, monkeypatch):
    err = _bad_input(capsys, ["--out", tmp_path / "s", "--slurm.time", 60])
    assert "allowed: --slurm.* options with --executor slurm" in err
    monkeypatch.setitem(sys.modules, "submitit", None)  # an import of it fails, as where it is not installed
    assert "pip install 'fastpnr[slurm]'" in _bad_input(capsys, ["--out", tmp_path / "s", "--executor", "slurm"])
    monkeypatch.delitem(sys.modules, "submitit")
    pytest.importorskip("submitit", reason="submitit not installed (pip install 'fastpnr[slurm]')")
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm commands
    assert "needs sbatch on the PATH" in _bad_input(capsys, ["--out", tmp_path / "s", "--executor", "slurm"])
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------------------ on the cluster
@pytest.fixture
def on_slurm(slurm_cluster, monkeypatch):
    pytest.importorskip("submitit", reason="submitit not installed (pip install 'fastpnr[slurm]')")
    monkeypatch.setattr(slurm, "POLL_S", 1.0)
    monkeypatch.delenv("FAKE_FAIL_METHOD", raising=False)
    return slurm_cluster


def _wait_until(condition, what: str):
    deadline = time.monotonic() + DONE_WITHIN_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {DONE_WITHIN_S} s"
        time.sleep(1)


def _submitted(out) -> dict:
    return json.loads((out / slurm.JOBS_FILE).read_text())


def test_unknown_partition_and_a_time_limit_below_one_epoch_are_refused_before_submitting(on_slurm, tmp_path, capsys):
    out = tmp_path / "s"
    err = _bad_input(capsys, ["--out", out, "--executor", "slurm", "--slurm.partition", "gpuu"])
    assert err == "error: slurm.partition='gpuu' is invalid; allowed: debug"
    err = _bad_input(capsys, ["--out", out, "--executor", "slurm", "--slurm.time", 2])
    assert "slurm.time='2' is invalid; allowed: at least 0:03:00: 60 s to start + the 120 s warning signal" in err
    # a finished cell of the study measured its epochs: the limit must also hold the longest one
    (out / "c").mkdir(parents=True)
    (out / "c" / "config.json").write_text(json.dumps({"optim": {"epochs": 2}}))
    (out / "c" / "metrics.json").write_text(json.dumps({"task_time_s": [100.0, 300.0]}))
    err = _bad_input(capsys, ["--out", out, "--executor", "slurm", "--slurm.time", 5])
    assert "at least 0:05:30: one epoch (0:02:30, measured in this study) + 60 s" in err
    assert on_slurm.run("squeue", "-h").stdout.strip() == "" and not (out / slurm.JOBS_FILE).exists()


@pytest.mark.slow
def test_failing_cell_reported_with_its_error_while_the_other_finishes_and_reruns_attach(on_slurm, tmp_path, capsys,
                                                                                         monkeypatch):
    monkeypatch.setattr(slurm, "CELL_PROGRAM", [FAKE])
    monkeypatch.setenv("FAKE_FAIL_METHOD", "byol")  # sbatch exports the environment to the jobs
    out = tmp_path / "s"
    args = ("--methods", "simclr,byol", "--regularizers", "pnr", "--out", out, "--executor", "slurm",
            "--slurm.time", 30)
    fastpnr(_cli(*args))
    jobs = _submitted(out)
    assert sorted(jobs) == ["byol-pnr-s5", "simclr-pnr-s5"] and all(len(j) == 1 for j in jobs.values())
    assert {j[0].split("_")[0] for j in jobs.values()} == {jobs["simclr-pnr-s5"][0].split("_")[0]}  # one array
    fastpnr(_cli(*args))  # at once: the jobs are in the queue (or done); nothing is submitted again
    assert _submitted(out) == jobs and "0 submitted" in capsys.readouterr().out
    _wait_until(lambda: "0 in the queue" in slurm.status_report(out) and "0 running" in slurm.status_report(out),
                "both jobs ended")
    status = slurm.status_report(out)
    assert "[study] 1/2 done, 0 running, 0 in the queue (0 requeued), 1 failed" in status
    failed = next(line for line in status.splitlines() if line.startswith("byol-pnr-s5"))
    assert " failed " in failed and failed.endswith("error: boom in byol")
    report = json.loads((out / "report.json").read_text())  # written by the jobs as they ended
    assert {c["name"]: c["status"] for c in report["cells"]} == {"simclr-pnr-s5": "done", "byol-pnr-s5": "failed"}
    assert next(c for c in report["cells"] if c["status"] == "failed")["error"] == "error: boom in byol"
    fastpnr(_cli(*args))  # the failed cell stays failed without --retry-failed: still nothing new
    assert _submitted(out) == jobs and "0 submitted" in capsys.readouterr().out
    monkeypatch.delenv("FAKE_FAIL_METHOD")
    fastpnr(_cli(*args, "--retry-failed", "--slurm.wait"))
    assert _submitted(out)["byol-pnr-s5"] != jobs["byol-pnr-s5"] and _submitted(out)["simclr-pnr-s5"] == jobs["simclr-pnr-s5"]
    assert "1 submitted" in capsys.readouterr().out and study.read_state(out / "byol-pnr-s5").status == "done"


def _real_args(data_root, out, regularizers, *extra):
    ov = tiny_overrides(data_root, **{"model.width": 8, "train.precision": "fp32", "train.threads": 1,
                                      **({"regularizer.distill_hidden": 32} if "pnr" in regularizers else {})})
    ov = {k: v for k, v in ov.items() if k not in ("train.progress", "train.log_every")}
    return _cli("--methods", "simclr", "--regularizers", regularizers, "--seeds", 5, "--out", out, *extra,
                *[a for k, v in ov.items() for a in (f"--{k}", v)])


@pytest.fixture(scope="module")
def local_study(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "s"
    fastpnr(_real_args(data_root, out, "finetune,pnr", "--jobs", 2))
    return out


def _matrices(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())["matrices"]


@pytest.mark.slow
def test_real_two_cell_study_on_slurm_equals_the_local_study_and_a_rerun_submits_nothing(on_slurm, local_study,
                                                                                         data_root, tmp_path, capsys):
    out = tmp_path / "s"
    args = _real_args(data_root, out, "finetune,pnr", "--executor", "slurm", "--slurm.time", 60,
                      "--slurm.cpus_per_cell", 1)
    fastpnr(args + ["--slurm.wait"])
    printed = capsys.readouterr().out
    assert "2 submitted" in printed and "[study] 2/2 done, 0 running, 0 in the queue (0 requeued), 0 failed" in printed
    for cell in ("simclr-finetune-s5", "simclr-pnr-s5"):
        state = study.read_state(out / cell)
        attempt = state.record["attempts"][-1]
        assert state.status == "done" and attempt["slurm_job"] == _submitted(out)[cell][0] and attempt["returncode"] == 0
        assert _matrices(out / cell) == _matrices(local_study / cell)  # CPU, deterministic: the same numbers
    here, there = json.loads((out / "report.json").read_text()), json.loads((local_study / "report.json").read_text())
    assert [r["metrics"] for r in here["table"]] == [r["metrics"] for r in there["table"]]
    jobs, written = _submitted(out), (out / "report.json").read_text()
    fastpnr(args)  # the same command again: every cell is done
    assert "0 submitted" in capsys.readouterr().out and _submitted(out) == jobs
    assert json.loads((out / "report.json").read_text())["table"] == json.loads(written)["table"]
    assert on_slurm.run("squeue", "-h").stdout.strip() == ""


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["requeue", "usr2"])
def test_real_cell_requeued_mid_task_resumes_to_the_uninterrupted_metrics(on_slurm, local_study, data_root, tmp_path,
                                                                           monkeypatch, stop):
    """The cell pauses inside task 1's first step (step 3 of 4) until it is signalled. ``scontrol requeue`` (what
    preemption does) sends SIGTERM; USR2 is the warning ``--signal`` sends before the time limit, on which submitit
    requeues the job itself. Either way the train process checkpoints after that step and exits, Slurm runs the job
    again (after its requeue delay) and the cell resumes from the step to the metrics of the uninterrupted cell."""
    _requeue_mid_task(on_slurm, data_root, tmp_path / "s", monkeypatch, stop, local_study / "simclr-finetune-s5")


@pytest.mark.slow
def test_real_torchrun_cell_requeued_mid_task_resumes_to_the_uninterrupted_two_process_metrics(
        on_slurm, data_root, tmp_path, monkeypatch):
    """--nproc_per_cell 2 on CPU: torchrun with two gloo processes inside the job. Slurm's SIGTERM reaches torchrun
    and both ranks; the ranks agree at a log step (every step here) and stop after the same one."""
    ref = tmp_path / "local"
    fastpnr(_real_args(data_root, ref, "finetune", "--nproc_per_cell", 2, "--train.log_every", 1))
    _requeue_mid_task(on_slurm, data_root, tmp_path / "s", monkeypatch, "requeue", ref / "simclr-finetune-s5",
                      "--nproc_per_cell", 2, "--slurm.cpus_per_cell", 2, "--train.log_every", 1)
    attempts = study.read_state(tmp_path / "s" / "simclr-finetune-s5").record["attempts"]
    assert all("--nproc_per_node=2" in a["command"] for a in attempts)
    metrics = json.loads((tmp_path / "s" / "simclr-finetune-s5" / "metrics.json").read_text())
    assert metrics["world_size"] == [2, 2]


def _requeue_mid_task(on_slurm, data_root, out, monkeypatch, stop, reference: Path, *extra):
    monkeypatch.setattr(slurm, "CELL_PROGRAM", [PAUSE])
    monkeypatch.setenv("PAUSE_AT_STEP", "3")
    fastpnr(_real_args(data_root, out, "finetune", "--executor", "slurm", "--slurm.time", 60, *extra))
    folder, job = out / "simclr-finetune-s5", _submitted(out)["simclr-finetune-s5"][0]
    ranks = 2 if "--nproc_per_cell" in extra else 1
    _wait_until(lambda: all((folder / f"paused.{r}").exists() for r in range(ranks)), "the cell reached its step 3")
    if stop == "requeue":
        on_slurm.run("scontrol", "requeue", job)
    else:  # to every process of the job's steps, as --signal=USR2@120 does (submitit's own test hook does the same)
        on_slurm.run("scancel", "--signal=USR2", job)
    _wait_until(lambda: study.read_state(folder).record.get("status") == "interrupted", "the stop was recorded")
    assert "requeued" in slurm.status_report(out)  # pending again in the queue
    slurm.wait_for_jobs(out, study.known_cells(study.load_study(out)), None, log=lambda *a: None)
    state = study.read_state(folder)
    assert state.status == "done" and [a["mode"] for a in state.record["attempts"]] == ["fresh", "resume"]
    first, second = state.record["attempts"]
    assert state.record["attempts"][0]["end"] < second["start"] and second["slurm_restarts"] == 1
    # one process exits EXIT_CHECKPOINTED; torchrun reports its workers' exit as its own failure (1)
    assert first["returncode"] == (slurm.EXIT_CHECKPOINTED if "--nproc_per_cell" not in extra else 1)
    log = (folder / "train.log").read_text()
    where = "task 1 (2/2) epoch 1/1, after step 1"  # step 3 of 4: task 1's only epoch (2 steps), its first step done
    assert f"stopped by SIG{'TERM' if stop == 'requeue' else 'USR2'}: checkpoint at {where}; resume with" in log
    assert any(line.startswith("resumed from ") and line.endswith(f"checkpoint.pt: {where}") for line in log.splitlines())
    assert _matrices(folder) == _matrices(reference)
    assert _submitted(out) == {"simclr-finetune-s5": [job]}  # the same job, requeued: nothing was submitted again
