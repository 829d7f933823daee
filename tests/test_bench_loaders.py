"""scripts/bench_loaders.py: the quick CPU run prints the header, one row per kind and the ratio line; bad input
is one line; a failing or missing kind is a "skipped" row, not a crash."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastpnr.errors import ConfigError
from scripts import bench_loaders as bl

ROOT = Path(__file__).resolve().parents[1]


def _rows(text: str) -> dict[str, list[str]]:
    """kind → the cells of its table row (`| dataset | size | kind | img/s | ratio |`)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 5 and cells[2] in bl.ALL_KINDS:
            rows[cells[2]] = cells
    return rows


def test_quick_cpu_run(data_root, tmp_path, capsys):
    out = tmp_path / "bench.json"
    bl.main(device="cpu", quick=True, data_dir=str(data_root), kinds="torchvision,gpu,ffcv,dali", batches=2,
            warmup=1, out=str(out), beton_dir=str(tmp_path / "betons"))
    text = capsys.readouterr().out
    assert "# device: cpu" in text and "# command: bench_loaders.main(" in text and "batch 64" in text
    head = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]
    assert head[0] == ["dataset", "size", "kind", "img/s", "ratio"]
    baseline = "torchvision" if bl.missing_package("torchvision") is None else "gpu"
    if baseline == "gpu":
        assert "of gpu (torchvision is not installed)" in text  # the ratio line says what the ratios are against
    else:
        assert "of torchvision (the anchors' PIL pipeline)" in text
    rows = _rows(text)
    assert set(rows) == set(bl.ALL_KINDS)
    for kind, (dataset, size, _, img_s, ratio) in rows.items():
        assert (dataset, size) == ("cifar10", "32")
        if bl.missing_package(kind) is not None:
            assert img_s == f"skipped: not installed ({bl.INSTALL[kind]})" and ratio == "-"
        elif not img_s.startswith("skipped"):
            assert float(img_s) > 0 and ratio.endswith("x")
    assert not rows["gpu"][3].startswith("skipped")  # the gpu kind always runs on CPU
    assert rows[baseline][4] == "1.00x"
    result = json.loads(out.read_text())
    assert result["baseline"] == baseline and result["header"]["batch_size"] == 64
    assert {r["kind"] for r in result["rows"]} == set(bl.ALL_KINDS)
    assert list((tmp_path / "betons").glob("cifar10_test_raw.beton")) or bl.missing_package("ffcv")


def test_failing_kind_is_a_skipped_row(data_root, monkeypatch, tmp_path, capsys):
    """A kind that raises is one "skipped: <error>" row, whichever extras are installed (dali counts as installed)."""
    real = bl.bench_one
    monkeypatch.setattr(bl, "missing_package", lambda kind: None)

    def flaky(kind, *args, **kw):
        if kind == "dali":
            raise RuntimeError("boom\nsecond line")
        return real(kind, *args, **kw)

    monkeypatch.setattr(bl, "bench_one", flaky)
    bl.main(device="cpu", quick=True, data_dir=str(data_root), kinds="gpu,dali", batches=1, warmup=1,
            out=str(tmp_path / "bench.csv"))
    rows = _rows(capsys.readouterr().out)
    assert rows["dali"][3] == "skipped: RuntimeError: boom second line" and rows["dali"][4] == "-"
    assert rows["gpu"][4] == "1.00x"
    csv_text = (tmp_path / "bench.csv").read_text()
    assert "# batch_size: 64" in csv_text and "dataset,size,kind,img_s,ratio,status" in csv_text


def test_missing_kind_is_one_skipped_row(data_root, monkeypatch, capsys):
    """A kind whose package is missing (dali here, installed or not) is one row naming the install command."""
    monkeypatch.setattr(bl, "missing_package", lambda kind: "nvidia.dali" if kind == "dali" else None)
    bl.main(device="cpu", quick=True, data_dir=str(data_root), kinds="gpu,dali", batches=1, warmup=1)
    text = capsys.readouterr().out
    assert _rows(text)["dali"][3:] == ["skipped: not installed (pip install nvidia-dali-cuda130)", "-"]
    assert "))" not in text


def test_missing_dataset_is_a_skipped_row(tmp_path, capsys):
    bl.main(device="cpu", quick=True, data_dir=str(tmp_path), kinds="gpu", batches=1, warmup=1)
    text = capsys.readouterr().out
    assert "| cifar10 | -    | all  | skipped: dataset 'cifar10'" in text


@pytest.mark.parametrize("kw", [dict(kinds="gpu,bogus"), dict(datasets="mnist"), dict(batches=0), dict(warmup=0),
                                dict(beton_format="png"), dict(device="tpu")])
def test_bad_input_is_a_config_error(kw):
    with pytest.raises(ConfigError):
        bl.run_benchmark(**{"device": "cpu", "quick": True, **kw})


def test_cli_bad_kind_is_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "fastpnr.cli", "bench_loaders", "--device", "cpu", "--kinds", "gpu,nope"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: kinds='nope' is invalid; allowed:") and "dali" in lines[0]


def test_cli_quick_gpu_kind(data_root):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "fastpnr.cli", "bench_loaders", "--device", "cpu", "--quick", "--kinds",
                        "gpu", "--batches", "1", "--data-dir", str(data_root)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "# command: fastpnr bench_loaders --device cpu --quick --kinds gpu" in p.stdout
    assert "gpu (torchvision not asked for)" in p.stdout
    assert float(_rows(p.stdout)["gpu"][3]) > 0
