"""``fastpnr bench`` and ``fastpnr profile`` in their CPU ``--quick`` modes (smoke tests of the scripts, real CIFAR-10),
and the pieces that can be checked without a GPU: the rows, the GPU idle share arithmetic."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from fastpnr.cli import main as fastpnr
from scripts import bench, profile


def test_rows_cover_each_loader_graph_and_streams():
    """Issue 6: the reference (torchvision, fp16, NCHW, eager, one stream, no prefetch) and fastpnr's configurations:
    every loader, eager vs graph, one vs two streams."""
    ref = bench.REFERENCE
    assert (ref.loader, ref.precision, ref.channels_last, ref.cuda_graph, ref.two_streams, ref.prefetch) == (
        "torchvision", "fp16", False, False, False, False)
    rows = bench.FASTPNR_ROWS
    assert {r.loader for r in rows} == {"gpu", "ffcv", "dali", "torchvision"}
    gpu = {(r.cuda_graph, r.two_streams) for r in rows if r.loader == "gpu"}
    assert gpu == {(False, False), (False, True), (True, False), (True, True)}
    assert all(r.precision == "bf16" and r.channels_last and r.prefetch for r in rows)
    assert len({r.name for r in [ref, *rows]}) == len(rows) + 1


@pytest.mark.slow
def test_bench_quick_prints_header_rows_and_ratio(data_root, capsys):
    fastpnr(["bench", "--device", "cpu", "--quick", "--data_dir", str(data_root)])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("# fastpnr bench | device: cpu") and "torch" in lines[0] and "command: fastpnr bench" in lines[0]
    assert "batch 8" in lines[1] and f"cifar10 train {bench.QUICK_IMAGES} images 16 px" in lines[1]
    names = [r.name for r in [bench.REFERENCE, *bench.FASTPNR_ROWS]]
    rows = {line.split("|")[0].strip(): line for line in lines if line.startswith(("anchors'", "fastpnr "))}
    assert list(rows) == names
    for row in [bench.REFERENCE, *bench.FASTPNR_ROWS]:
        ips, ratio = (c.strip() for c in rows[row.name].split("|")[1:3])
        why = bench.missing(row.loader)
        if why is not None:
            assert ips == "-" and ratio == why and "not installed" in ratio
        else:
            assert float(ips) > 0 and ratio.endswith("x"), rows[row.name]
    assert not any("failed" in line for line in rows.values())
    if bench.missing("torchvision") is not None:
        assert any("ratio vs the first fastpnr row" in line for line in lines)
    assert any(line.startswith("ratio") for line in lines)


def test_bench_compile_row_is_opt_in_and_validated(capsys):
    with pytest.raises(SystemExit) as e:
        fastpnr(["bench", "--device", "cpu", "--quick", "--compile", "max-autotune"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: compile='max-autotune' is invalid; allowed: off, default") and "\n" not in err
    assert all(r.compile == "off" for r in [bench.REFERENCE, *bench.FASTPNR_ROWS])


def test_cli_bad_input_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        fastpnr(["profile", "--device", "cpu", "--quick", "--loader", "pil"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: loader='pil' is invalid; allowed:") and len(err.splitlines()) == 1


@pytest.mark.slow
def test_profile_quick_writes_trace_and_prints_table(data_root, tmp_path, capsys):
    fastpnr(["profile", "--device", "cpu", "--quick", "--data_dir", str(data_root), "--out_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "top operators by self CPU time" in out and "Self CPU time total" in out
    assert "aten::" in out
    assert "gpu idle share: not measurable on cpu" in out
    traces = list(tmp_path.glob("*.pt.trace.json"))
    assert len(traces) == 1
    trace = json.loads(traces[0].read_text())
    assert trace["traceEvents"]  # what TensorBoard's PyTorch Profiler tab reads


def _kernel(start, end, device=torch.autograd.DeviceType.CUDA):
    return SimpleNamespace(device_type=device, time_range=SimpleNamespace(start=start, end=end))


def test_gpu_idle_share_is_one_minus_the_union_of_kernel_intervals():
    # window 0..100 us; busy: [0, 30) U [20, 40) U [50, 60) U [90, 100) = 60 us; CPU events and empty ones ignored
    events = [_kernel(20, 40), _kernel(0, 30), _kernel(90, 100), _kernel(50, 60), _kernel(55, 58),
              _kernel(0, 1000, device=torch.autograd.DeviceType.CPU), _kernel(70, 70)]
    share, window_ms = profile.gpu_idle_share(events)
    assert share == pytest.approx(0.4) and window_ms == pytest.approx(0.1)
    assert profile.gpu_idle_share([_kernel(0, 5, device=torch.autograd.DeviceType.CPU)]) is None
    assert profile.gpu_idle_share([_kernel(3, 9)]) == (pytest.approx(0.0), pytest.approx(0.006))


def test_bench_quick_decodes_only_the_images_it_uses(tmp_path, monkeypatch, capsys):
    """Issue 10: --quick decoded (and cached) all 50,000 training images to use 512."""
    import fastpnr.data.decode as decode
    from fastpnr.data import cache
    from tests.data.utils import jpeg_bytes, write_tar

    n = bench.QUICK_IMAGES + 88
    write_tar(tmp_path / "data" / "cifar10" / "train.tar", "train",
              {f"c{i % 10}/{i:04d}.jpg": jpeg_bytes(i) for i in range(n)}, mode="w")
    monkeypatch.setenv("FASTPNR_CACHE", str(tmp_path / "cache"))
    decoded = []
    real = decode._decode_chunk
    monkeypatch.setattr(decode, "_decode_chunk", lambda blobs, size: decoded.append(len(blobs)) or real(blobs, size))
    from fastpnr.cli import _module

    cli_bench = _module("bench")  # the module `fastpnr bench` runs (fastpnr.scripts.bench when installed)
    sources = []  # the data each row would train on (the steps themselves are test_bench_quick_prints_...'s)
    monkeypatch.setattr(cli_bench, "build_setup", lambda row, data, *a, **k: (SimpleNamespace(graph=None),
                                                                          sources.append(data.source(row.loader))))
    monkeypatch.setattr(cli_bench, "time_row", lambda *a, **k: 1.0)
    fastpnr(["bench", "--device", "cpu", "--quick", "--data_dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert f"cifar10 train {bench.QUICK_IMAGES} images 16 px" in out and "failed" not in out
    assert sources and all(len(s) == bench.QUICK_IMAGES for s in sources if not isinstance(s, str))
    assert sum(decoded) == bench.QUICK_IMAGES
    assert not cache.entries(tmp_path / "cache")  # nothing written to the decode cache
    encoded = bench.BenchData(sources[0], tmp_path / "data", subset=bench.QUICK_IMAGES).encoded()  # the dali row's
    assert len(encoded) == bench.QUICK_IMAGES and sum(decoded) == bench.QUICK_IMAGES


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["gpu", "ffcv"])
def test_bench_scaling_quick_on_gloo_runs_each_world_size_and_their_first_losses_agree(data_root, capsys, loader):
    """Issue 12's scaling check in its CPU smoke mode: one torchrun launch per world size, the global batch split
    across the ranks (each reading only its rows); the first step's global loss is the same for 1 and 2 processes
    (same seed, same batch, and with these loaders the same augmentations)."""
    if bench.missing(loader) is not None:
        pytest.skip(bench.missing(loader))
    fastpnr(["bench_scaling", "--device", "cpu", "--quick", "--world_sizes", "1,2", "--data_dir", str(data_root),
             "--loader", loader])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# fastpnr bench_scaling | device: cpu") and "backend: gloo" in lines[0]
    assert f"| {loader} loader (workers per rank: 1)" in lines[1]
    rows = [[c.strip() for c in line.split("|")] for line in lines if line.split("|")[0].strip().isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1", "8"), ("2", "4")], lines
    assert all(float(r[2]) > 0 and r[3].endswith("x") and r[4].endswith("%") for r in rows)
    first, last = zip(*([float(v) for v in r[5].split("(")[0].split(",")] for r in rows))
    assert abs(first[1] - first[0]) <= 1e-5 * abs(first[0]), first
    assert all(v == v and v > 0 for v in last)


@pytest.mark.parametrize("args, message", [
    (["--world_sizes", "1,3"], "error: batch_size=8 is invalid; allowed: a multiple of every world size (here 3)"),
    (["--world_sizes", "0"], "error: world_sizes=0 is invalid; allowed: comma-separated ints >= 1"),
    (["--device", "tpu"], "error: device='tpu' is invalid; allowed: cpu or cuda"),
    (["--loader", "pil"], "error: loader='pil' is invalid; allowed: dali, ffcv, gpu, torchvision"),
])
def test_bench_scaling_bad_input_is_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        fastpnr(["bench_scaling", "--quick", "--device", "cpu", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err, err
