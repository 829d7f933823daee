"""``fastpnr bench`` and ``fastpnr profile`` in their CPU ``--quick`` modes (smoke tests of the scripts, real CIFAR-10)."""
from __future__ import annotations

import json

from fastpnr.cli import main as fastpnr


def test_bench_quick_prints_header_rows_and_ratio(data_root, capsys):
    fastpnr(["bench", "--device", "cpu", "--quick", "--data_dir", str(data_root)])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("# fastpnr bench | device: cpu") and "torch" in lines[0] and "command: fastpnr bench" in lines[0]
    assert "batch 8" in lines[1]
    rows = [line for line in lines if line.startswith(("anchors'", "fastpnr gpu"))]
    assert len(rows) == 5
    reference, ours = rows[0], rows[1:]
    try:
        import torchvision  # noqa: F401
        assert "skipped" not in reference
    except ImportError:
        assert "skipped: torchvision not installed" in reference
        assert any("ratio vs the first fastpnr row" in line for line in lines)
    for row in ours:
        ips, ratio = (c.strip() for c in row.split("|")[1:3])
        assert float(ips) > 0 and ratio.endswith("x")
    assert any(line.startswith("ratio") for line in lines)


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
