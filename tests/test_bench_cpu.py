"""``fastpnr bench_cpu``: the burners it starts are gone when it ends, and one cell of the table runs the main job's
step in its own process with the wait policy and threads given (real CIFAR-10)."""
from __future__ import annotations

import os

import pytest

from scripts import bench_cpu


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is not running
        return f.read().split(")")[-1].split()[0] != "Z"


def test_burners_run_during_the_block_and_are_gone_after():
    with bench_cpu.Burners(2) as b:
        pids = [p.pid for p in b.procs]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.slow
def test_one_cell_of_the_table_prints_img_s_cpu_time_ratio_and_load(data_root, capsys, monkeypatch):
    monkeypatch.setenv("FASTPNR_DATA", str(data_root))
    bench_cpu.main(precisions="fp32", threads="1", wait_policies="passive", burners="0", steps=1, warmup=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# fastpnr bench_cpu") and "cpu capability" in lines[0] and "precision auto ->" in lines[0]
    row = [c.strip() for c in lines[-1].split("|")]
    assert row[:5] == ["0 burners", "simclr", "fp32", "1", "passive"], lines
    assert float(row[5]) > 0 and float(row[7]) > 0 and row[8] == "1.00x" and float(row[9]) >= 0
