"""The console script: help lists the registries; bad input gives a one-line error and exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fastpnr.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_train_help_lists_methods_regularizers_datasets_scenarios_presets():
    out = _run("train", "--help")
    text = out.stdout + out.stderr
    for word in ["simclr", "mocov2plus", "byol", "simsiam", "barlow", "vicreg", "finetune", "pnr", "cassle",
                 "cifar10", "cifar100", "tinyimagenet100", "pacs", "imagefolder", "class", "data", "domain",
                 "smoke", "cifar100-5t", "cifar100-10t", "tinyimagenet100-5t", "pacs-domain", "domainnet",
                 "domainnet-6t"]:
        assert word in text, word


def test_top_level_help_and_unknown_command():
    assert "train" in _run("--help").stdout
    bad = _run("trian")
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


def test_python_dash_m_fastpnr_is_the_console_script():
    """`python -m fastpnr` works without the console script (a GPU machine that only gets the source tree)."""
    out = subprocess.run([sys.executable, "-m", "fastpnr", "bench_kernels", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--matmul_precision " in out.stdout and "INFO:" not in out.stdout + out.stderr
    bad = subprocess.run([sys.executable, "-m", "fastpnr", "trian"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown command 'trian'" in bad.stderr


def test_bad_option_is_one_line_error(tmp_path):
    out = _run("train", "--preset", "smoke", "--method", "nope", "--out", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: method='nope' is invalid; allowed:")
    assert len(out.stderr.strip().splitlines()) == 1


def test_missing_data_says_where_it_looked(tmp_path):
    empty = tmp_path / "nodata"
    empty.mkdir()
    out = _run("train", "--preset", "smoke", "--data-dir", str(empty), "--out", str(tmp_path / "run"),
               "--train.progress", "false")
    assert out.returncode == 2
    msg = out.stderr.strip()
    assert msg.startswith("error:") and str(empty) in msg and len(msg.splitlines()) == 1


def test_resume_of_missing_run_is_clear(tmp_path):
    out = _run("train", "--resume", str(tmp_path / "none"))
    assert out.returncode == 2 and "no such folder or file" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bad_moco_queue_is_refused_before_the_run_folder_is_made(tmp_path):
    for size in ("1000", "16"):
        out = _run("train", "--method", "mocov2plus", "--method.queue_size", size, "--optim.batch_size", "32",
                   "--out", str(tmp_path / "run"))
        msg = out.stderr.strip()
        assert out.returncode == 2 and msg.startswith(f"error: method.queue_size={size} is invalid with optim.batch_size=32")
        assert "multiple of the batch size" in msg and len(msg.splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_out_on_a_run_folder_is_refused_and_resume_refuses_result_changing_settings(tmp_path):
    import torch

    from fastpnr.config import build_config

    cfg = build_config("smoke", {})
    torch.save({"config": cfg.to_dict(), "next_task": 0, "next_epoch": 1}, tmp_path / "checkpoint.pt")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = _run("train", "--out", str(tmp_path), "--train.progress", "false")
    assert out.returncode == 2 and "already holds a run" in out.stderr and f"--resume {tmp_path}" in out.stderr
    bad = _run("train", "--resume", str(tmp_path), "--train.threads", "2", "--optim.lr", "0.1")
    msg = bad.stderr.strip()
    assert bad.returncode == 2 and len(msg.splitlines()) == 1
    assert "train.threads None -> 2" in msg and "optim.lr 0.6 -> 0.1" in msg and "--allow-config-change" in msg
    task = _run("train", "--resume", str(tmp_path / "task0.pt"))
    assert task.returncode == 2 and "not a resumable checkpoint" in task.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_under_torchrun_only_rank_0_prints_an_error_and_the_run_folder(monkeypatch, capsys):
    """Bad input is the same on every rank: rank 0 prints it at once; another rank waits for torchrun to stop it
    (when rank 0 exits) and speaks only if it was not stopped, naming itself. The final `run folder:` line: rank 0."""
    import importlib
    import io

    from fastpnr.system.distributed import report_error
    from fastpnr.errors import ConfigError

    train = importlib.import_module("scripts.train")
    err = ConfigError("optim.batch_size=4096 is invalid")
    for rank, expect in (("0", "error: optim.batch_size=4096 is invalid\n"),
                         ("1", "error: rank 1: optim.batch_size=4096 is invalid\n")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        waits, stream = [], io.StringIO()
        report_error(err, stream=stream, sleep=waits.append)
        assert stream.getvalue() == expect and waits == ([] if rank == "0" else [30.0])
        train._done({}, "run-folder")
        assert ("run folder:" in capsys.readouterr().out) == (rank == "0")
    from fastpnr.system.distributed import PeerFailure

    stream = io.StringIO()  # news of a stopped rank (maybe rank 0) is this rank's own: no wait
    report_error(PeerFailure("rank 0 stopped"), stream=stream, sleep=lambda s: (_ for _ in ()).throw(AssertionError))
    assert stream.getvalue() == "error: rank 1: rank 0 stopped\n"
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    stream = io.StringIO()
    report_error(err, stream=stream, sleep=lambda s: (_ for _ in ()).throw(AssertionError("one process waited")))
    assert stream.getvalue() == "error: optim.batch_size=4096 is invalid\n"


def test_the_printed_config_shows_the_run_folder_given_with_out(tmp_path):
    from fastpnr.config import build_config, format_config

    cfg = build_config("smoke", {})
    assert cfg.out is None and "out: None" in format_config(cfg)
    assert f"out: {tmp_path}" in format_config(cfg, out=tmp_path).splitlines()


def _imports_torch(stderr: str) -> bool:
    """Whether `python -X importtime` imported torch (one "import time: ... | torch" line per module imported)."""
    return any(line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == "torch"
               for line in stderr.splitlines())


def test_bad_input_is_refused_before_torch_is_imported(tmp_path):
    """A typo in an option, preset, value or config file is one line without `import torch` (half a minute on a
    busy machine); only the checks across sections (method x strategy x batch) need the classes, after it."""
    bad_file = tmp_path / "bad.json"
    bad_file.write_text('{"optim": {"lrr": 0.1}}')
    cases = [(["--bogus.option", "1"], "option 'bogus.option' is not known"),
             (["--optim.lr", "abc"], "optim.lr='abc' is invalid"),
             (["--preset", "nope"], "preset='nope' is invalid"),
             (["--method", "byol", "--method.temprature", "0.1"], "method.temprature is not a known option"),
             (["--regularizer", "pnr", "--regularizer.pos_weight", "-1"], "regularizer.pos_weight=-1"),
             (["--data.loader", "nope"], "data.loader='nope' is invalid"),
             (["--model.backbone", "resnet7"], "model.backbone='resnet7' is invalid"),
             (["--config", str(bad_file)], f"--config {bad_file}: key optim.lrr is not a field"),
             (["--out", str(bad_file)], f"--out {bad_file}: is a file"),
             (["--resume", str(tmp_path), "--bogus.option", "1"], f"--resume {tmp_path}: the folder has no")]
    for args, needle in cases:
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "fastpnr", "train", *args], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
        errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
        assert done.returncode == 2 and len(errors) == 1 and needle in errors[0], (args, errors)
        assert not _imports_torch(done.stderr), args
    both = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch"], capture_output=True, text=True,
                          timeout=120)
    assert _imports_torch(both.stderr)  # the check sees an import of torch where there is one


def test_the_torch_free_lists_match_the_registries():
    from fastpnr.config import BACKBONE_NAMES
    from fastpnr.method_configs import METHOD_CONFIGS
    from fastpnr.methods import METHODS
    from fastpnr.models import BACKBONES
    from fastpnr.regularizer_configs import REGULARIZER_CONFIGS
    from fastpnr.regularizers import REGULARIZERS

    assert set(BACKBONE_NAMES) == set(BACKBONES)
    assert {k: v[1] for k, v in METHODS.items()} == METHOD_CONFIGS
    assert {k: v[1] for k, v in REGULARIZERS.items()} == REGULARIZER_CONFIGS
