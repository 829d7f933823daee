"""fastpnr bench_vit on CPU (--quick): a row per attention backend asked, an img/s figure or why it cannot run."""
from __future__ import annotations

import re

import pytest

from scripts import bench_vit


def test_quick_cpu_rows_report_img_per_s_per_backend(capsys):
    bench_vit.main(device="cpu", quick=True, backends="math,flash")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert [r.split()[0] for r in rows] == ["math", "flash"]
    math_rate = re.search(r"math\s+([0-9.]+) img/s", rows[0])
    assert math_rate and float(math_rate.group(1)) > 0 and "vit_small/8 at 64 px" in rows[0]  # the math kernel always runs


def test_an_unknown_backend_is_one_line():
    from fastpnr.errors import ConfigError

    with pytest.raises(ConfigError, match="backends='cudnn' is invalid; allowed: flash, efficient, math"):
        bench_vit.main(device="cpu", quick=True, backends="cudnn")
