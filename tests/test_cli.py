"""The console script: help lists the registries; bad input gives a one-line error and exit code 2."""
from __future__ import annotations

import os
import subprocess
import sys



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
    assert out.returncode == 2 and "no checkpoint at" in out.stderr
