"""A run that stops before its first checkpoint leaves nothing behind: not an empty --out, not tasks.json, not the
folders it made; never anything that was there before; a resume deletes nothing. Through the command line
(in-process, so the download can be made to fail), on tiny image folders (tests/data/utils.py), no network."""
from __future__ import annotations

import io
import urllib.error

import numpy as np
import pytest
from PIL import Image

from fastpnr.config import build_config
from fastpnr.train.continual import ContinualRun
from scripts.train import cli
from tests.data.utils import two_class_folder_overrides, write_tree

TINY = {"model.width": 16, "train.threads": 1}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every download fails at once, as on a machine without network."""
    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr("urllib.request.urlopen", unreachable)


def train(capsys, overrides: dict, *flags: str) -> str:
    """`fastpnr train --preset smoke FLAGS --key value ...`; its one-line error (exit code 2)."""
    args = ["--preset", "smoke", *flags]
    for k, v in {**TINY, **overrides}.items():
        args += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    with pytest.raises(SystemExit) as e:
        cli(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def _one_class_folder(root):
    jpeg = []
    for i in range(8):
        buf = io.BytesIO()
        Image.fromarray(np.full((16, 16, 3), 10 * i, np.uint8)).save(buf, "JPEG")
        jpeg.append(buf.getvalue())
    for split in ("train", "val"):
        write_tree(root, split, {f"ants/{i:03d}.jpg": b for i, b in enumerate(jpeg)})


def test_missing_data_dir_leaves_neither_the_run_folder_nor_a_data_folder(tmp_path, capsys):
    err = train(capsys, {"data.data_dir": tmp_path / "nonexistent"}, "--out", str(tmp_path / "runs" / "x"))
    assert "could not download" in err
    assert list(tmp_path.iterdir()) == []  # no runs/x, no nonexistent/cifar10


def test_a_data_dir_holding_an_empty_folder_stays_as_it_was(tmp_path, capsys):
    (tmp_path / "data" / "empty").mkdir(parents=True)
    train(capsys, {"data.data_dir": tmp_path / "data"}, "--out", str(tmp_path / "x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["empty"]  # no cifar10/ from the failed download


@pytest.mark.parametrize("case", ["corrupt", "one_class", "batch"])
def test_bad_data_or_batch_leaves_no_run_folder(tmp_path, capsys, case):
    if case == "one_class":
        ov = two_class_folder_overrides(tmp_path / "unused")
        _one_class_folder(tmp_path / "one")
        ov["data.data_dir"] = tmp_path / "one"
    else:
        ov = two_class_folder_overrides(tmp_path, corrupt="train/ants/003.jpg" if case == "corrupt" else None)
    if case == "batch":
        ov["optim.batch_size"] = 64  # each task has 24 training images
    out = tmp_path / "run"
    err = train(capsys, ov, "--out", str(out))
    assert {"corrupt": "corrupt image", "one_class": "a single class, 'ants'",
            "batch": "optim.batch_size=64"}[case] in err
    assert not out.exists()  # before the fix: an empty folder; with the batch: tasks.json and tasks_indices.npz


def test_a_folder_that_was_there_keeps_what_it_held(tmp_path, capsys):
    ov = two_class_folder_overrides(tmp_path, **{"optim.batch_size": 64})
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    train(capsys, ov, "--out", str(out))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # --overwrite deletes the old run's files as asked; the new run, stopped, leaves none of its own
    for name in ("config.json", "checkpoint.pt", "task0.pt"):
        (out / name).write_text("old run")
    train(capsys, ov, "--out", str(out), "--overwrite")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_ctrl_c_while_the_data_loads_removes_the_run_folder(tmp_path, monkeypatch):
    import fastpnr.data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()
    monkeypatch.setattr(fastpnr.data, "load_dataset", interrupted)
    ov = two_class_folder_overrides(tmp_path, **TINY)
    with pytest.raises(KeyboardInterrupt):
        ContinualRun(build_config("smoke", ov), tmp_path / "runs" / "x", log=lambda *a: None).fit()
    assert not (tmp_path / "runs").exists()


def test_a_resume_that_stops_before_training_deletes_nothing(tmp_path, capsys):
    ov = two_class_folder_overrides(tmp_path, **{**TINY, "optim.epochs": 2})
    out = tmp_path / "run"
    ContinualRun(build_config("smoke", ov), out, log=lambda *a: None).fit(stop_after_epochs=1)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"checkpoint.pt", "config.json", "tasks.json", "tasks_indices.npz"} <= set(before)
    with pytest.raises(SystemExit):  # the data moved away (a safe change): the resume stops while loading it
        cli(["--resume", str(out), "--data.data_dir", str(tmp_path / "moved")])
    assert "not found" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert (out / "tb").is_dir()


def _no_data_read(monkeypatch):
    import fastpnr.data

    def read(*args, **kwargs):
        raise AssertionError("the data was read before the run folder was checked")
    monkeypatch.setattr(fastpnr.data, "load_dataset", read)


def _read_only(monkeypatch, folder):
    """``folder`` as on a read-only file system (the tests run as root, whom permission bits do not stop)."""
    import os

    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.path.abspath(p) == os.path.abspath(folder)
                        and mode & os.W_OK else access(p, mode, **kw))


def test_an_out_that_cannot_be_written_is_one_line_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    _no_data_read(monkeypatch)
    ov = two_class_folder_overrides(tmp_path, **TINY)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    err = train(capsys, ov, "--out", str(a_file))
    assert err == f"error: --out {a_file}: is a file, not a folder; allowed: a new folder or a run folder"
    err = train(capsys, ov, "--out", str(a_file / "run"))
    assert err.startswith(f"error: --out {a_file / 'run'}: cannot be created, {a_file} is a file")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    _read_only(monkeypatch, read_only)
    err = train(capsys, ov, "--out", str(read_only / "runs" / "x"))
    assert err.startswith(f"error: --out {read_only / 'runs' / 'x'}: cannot be created: {read_only} is not writable "
                          "(a read-only file system or no write permission)")
    err = train(capsys, ov, "--out", str(read_only))
    assert err.startswith(f"error: --out {read_only}: is not writable")
    assert not (read_only / "runs").exists() and list(read_only.iterdir()) == []


def test_ctrl_c_before_the_first_checkpoint_is_one_line_without_a_traceback(tmp_path, capsys, monkeypatch):
    import fastpnr.data

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()
    monkeypatch.setattr(fastpnr.data, "load_dataset", interrupted)
    args = ["--preset", "smoke", "--out", str(tmp_path / "run")]
    for k, v in two_class_folder_overrides(tmp_path, **TINY).items():
        args += [f"--{k}", str(v)]
    with pytest.raises(SystemExit) as e:
        cli(args)
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "stopped by Ctrl-C before the run's first checkpoint (nothing to resume)"
    assert not (tmp_path / "run").exists()
