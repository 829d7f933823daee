"""Atomic files: the target is the old file or the whole new one, never half; a write cut short leaves only a hidden
temporary file whose name says what it was for; the file gets a plain open's permissions."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from fastpnr.system.atomic import atomic_file, temporary_name, temporary_target, write_json
from fastpnr.system.checkpoint import atomic_save


def test_write_json_writes_numpy_and_torch_values_as_numbers(tmp_path):
    path = tmp_path / "sub" / "m.json"  # a missing folder is created
    write_json(path, {"a": np.float32(0.5), "b": np.arange(3), "c": torch.tensor([1.5, 2.0]), "d": (1, 2), "e": 3})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": [1.5, 2.0], "d": [1, 2], "e": 3}
    write_json(path, [1], indent=None)
    assert path.read_text() == "[1]"
    assert os.listdir(path.parent) == ["m.json"]


def test_an_exception_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"old": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(path, "w") as f:
            f.write('{"new": ')
            raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"old": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]
    with pytest.raises(TypeError):  # an object json cannot write is caught before the rename too
        write_json(path, {"x": object.__new__(type("NoStr", (), {"__str__": None}))})
    assert json.loads(path.read_text()) == {"old": 1} and os.listdir(tmp_path) == ["metrics.json"]


def test_a_killed_write_leaves_a_temporary_that_names_its_target(tmp_path):
    path = tmp_path / "checkpoint.pt"
    tmp = temporary_name(path)
    assert tmp.parent == tmp_path and tmp.name.startswith(".checkpoint.pt.") and tmp.name.endswith(".tmp")
    assert temporary_target(tmp.name) == "checkpoint.pt"
    assert temporary_name(path) != tmp  # two writers of one file never share a temporary
    for name in ("checkpoint.pt", ".checkpoint.pt.tmp", ".checkpoint.pt.XYZ12345.tmp", "checkpoint.pt.0123abcd.tmp"):
        assert temporary_target(name) is None, name


def test_files_get_a_plain_opens_permissions_and_checkpoints_load_back(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        atomic_save({"w": torch.arange(4)}, tmp_path / "c.pt")
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(old)
    modes = {p: stat.S_IMODE(os.stat(tmp_path / p).st_mode) for p in ("a.json", "c.pt", "plain")}
    assert modes["a.json"] == modes["c.pt"] == modes["plain"] == 0o644
    assert torch.equal(torch.load(tmp_path / "c.pt")["w"], torch.arange(4))


def test_only_write_modes_are_allowed(tmp_path):
    with pytest.raises(ValueError, match="'a'.*'w' or 'wb'"):
        with atomic_file(tmp_path / "x", "a"):
            pass
