"""docs/FIDELITY.md names real tests: every `file.py::test` (and `::test` continuing the last file) exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fidelity_page_names_only_existing_tests():
    text = (ROOT / "docs" / "FIDELITY.md").read_text()
    refs, current = [], None
    for path, name in re.findall(r"`(?:([\w/]+\.py))?::(test_\w+)`", text):  # code references name no test_
        current = path or current
        refs.append((current, name))
    assert len(refs) > 40
    missing = [f"{p}::{n}" for p, n in refs
               if not re.search(rf"^def {n}\(", (ROOT / "tests" / p).read_text() if (ROOT / "tests" / p).exists() else "", re.M)]
    assert not missing, missing


def test_docs_name_no_folder_of_the_machine_they_were_written_on():
    """Commands in docs/ run from a checkout (``--data-dir ../shared/data``): no absolute path of one machine."""
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "docs").rglob("*.md"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"(?<![\w.])/(work|root|tmp)/", line)]
    assert not found, found
