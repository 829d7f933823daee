"""What a run records about its data (TaskData on tiny synthetic image folders, no training): skipped
files and corrupt images named, the seeds of the split, the split itself in tasks_indices.npz."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastpnr.config import build_config
from fastpnr.data.task_data import TaskData
from fastpnr.data import load_dataset
from fastpnr.data.scenarios import data_splits
from tests.data.utils import jpeg_bytes, write_tree

CLASSES = ("ant", "bee", "cat", "dog")


def _write_folder(root, per_class=(6, 2), extra: dict | None = None):
    for split, n in zip(("train", "val"), per_class):
        write_tree(root, split, {f"{c}/{i:02d}.jpg": jpeg_bytes(100 * k + 10 * (split == "val") + i)
                                 for k, c in enumerate(CLASSES) for i in range(n)})
    for rel, data in (extra or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _run(tmp_path, data_dir, log=None, **extra):
    ov = {"dataset": "imagefolder", "data.data_dir": str(data_dir), "data.num_tasks": 2, "data.train_fraction": 1.0,
          "data.test_fraction": 1.0, "eval.train_fraction": 1.0, "data.cache_dir": str(tmp_path / "cache"),
          "train.progress": False, **extra}
    lines = []
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    run = TaskData(build_config("smoke", ov), tmp_path / "run", log=log or lines.append)
    return run, lines


def test_empty_class_stray_and_empty_files_are_reported_not_dropped_silently(tmp_path):
    data = _write_folder(tmp_path / "data", extra={"train/zebra/.keep": b"", "train/.DS_Store": b"\0\1",
                                                   "train/cat/notes.txt": b"hello", "train/dog/99.jpg": b""})
    (data / "train" / "yak").mkdir()
    ds = load_dataset("imagefolder", "train", data, cache_dir=tmp_path / "cache")
    assert ds.classes == list(CLASSES) and len(ds) == 24
    assert sorted(ds.skipped.empty_classes) == ["yak", "zebra"]
    assert sorted(n.rsplit("/", 1)[-1] for n in ds.skipped.not_images) == [".DS_Store", ".keep", "notes.txt"]
    assert [n.rsplit("/", 2)[-2:] for n in ds.skipped.empty_files] == [["dog", "99.jpg"]]
    cached = load_dataset("imagefolder", "train", data, cache_dir=tmp_path / "cache")
    assert cached.from_cache and cached.skipped == ds.skipped  # a cache hit still knows

    run, lines = _run(tmp_path, data)
    tasks = json.loads((run.out / "tasks.json").read_text())
    rec = tasks["skipped"]["train"]
    assert sorted(rec["empty_classes"]) == ["yak", "zebra"] and rec["counts"]["not_images"] == 3
    assert rec["empty_files"][0].endswith("dog/99.jpg") and tasks["skipped"]["val"]["counts"]["empty_classes"] == 0
    said = [line for line in lines if line.startswith("data: skipped in imagefolder/train")]
    assert len(said) == 1 and "2 empty class folders (yak, zebra)" in said[0] and "notes.txt" in said[0]
    assert run.data_note == " skipped={'empty_classes': 2, 'not_images': 3, 'empty_files': 1}"


def test_skipped_archive_members_and_empty_class_in_a_tar(tmp_path):
    import io
    import tarfile

    path = tmp_path / "train.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in [("train/ant/0.jpg", jpeg_bytes(1)), ("train/zebra/readme.md", b"x"),
                           ("train/ant/1.jpg", b""), ("train/._ant.jpg", b"meta")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        tf.addfile(_dir("train/yak"))
    ds = load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert len(ds) == 1 and ds.classes == ["ant"]
    assert sorted(ds.skipped.empty_classes) == ["yak", "zebra"]
    assert ds.skipped.empty_files == [f"{path}::train/ant/1.jpg"]
    assert sorted(ds.skipped.not_images) == [f"{path}::train/._ant.jpg", f"{path}::train/zebra/readme.md"]


def _dir(name):
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_split_seeds_and_indices_are_recorded_and_match_the_run(tmp_path):
    data = _write_folder(tmp_path / "data", per_class=(10, 3))
    run, _ = _run(tmp_path, data, **{"data.scenario": "data", "data.train_fraction": 0.5, "data.test_fraction": 0.5,
                                     "eval.train_fraction": 0.5, "data.split_seed": 3, "data.data_split_seed": 7})
    tasks = json.loads((run.out / "tasks.json").read_text())
    assert tasks["seeds"] == {"class_order": 3, "data_split": 7, "train_subsample": [1003, 1004],
                              "test_subsample": 1002, "eval_train_subsample": 1001}
    saved = np.load(run.out / tasks["indices_file"])
    assert sorted(saved.files) == ["eval_train", "task0", "task1", "test", "test_task0", "test_task1"]
    for t in range(2):
        assert np.array_equal(saved[f"task{t}"], run.task_train[t]) and len(saved[f"task{t}"]) == 10
        assert np.array_equal(saved[f"test_task{t}"], run.test_indices[run.test_parts[t]])
        # the recorded seed and fraction regenerate the task's images from the data-IL split
        chunk = data_splits(40, 2, seed=tasks["seeds"]["data_split"])[t]
        rng = np.random.default_rng(tasks["seeds"]["train_subsample"][t])
        assert np.array_equal(saved[f"task{t}"], np.sort(rng.choice(chunk, 10, replace=False)))
    assert np.array_equal(saved["test"], run.test_indices) and np.array_equal(saved["eval_train"], run.eval_train)


def test_data_split_seed_changes_the_data_il_split(tmp_path):
    data = _write_folder(tmp_path / "data", per_class=(10, 3))
    ov = {"data.scenario": "data"}
    default, _ = _run(tmp_path / "a", data, **ov)
    same, _ = _run(tmp_path / "b", data, **ov, **{"data.data_split_seed": 42, "data.split_seed": 6})
    other, _ = _run(tmp_path / "c", data, **ov, **{"data.data_split_seed": 43})
    assert all(np.array_equal(a, b) for a, b in zip(default.task_train, same.task_train))  # 42: the anchors'
    assert not np.array_equal(default.task_train[0], other.task_train[0])
    assert [a.tolist() for a in other.task_train] == [a.tolist() for a in data_splits(40, 2, seed=43)]


def test_corrupt_images_are_named_once_in_the_log_and_tasks_json(tmp_path):
    bad = jpeg_bytes(7, size=(16, 16))
    data = _write_folder(tmp_path / "data", extra={"train/bee/77.jpg": bad[: len(bad) // 2], "val/ant/xx.jpg": b"junk"})
    run, lines = _run(tmp_path, data, **{"data.skip_corrupt": True})
    assert run.num_corrupt == 2 and len(run.corrupt_images) == 2
    assert run.corrupt_images[0].endswith("train/bee/77.jpg") and run.corrupt_images[1].endswith("val/ant/xx.jpg")
    for name in run.corrupt_images:
        assert sum(name in line for line in lines) == 1
    assert json.loads((run.out / "tasks.json").read_text())["corrupt_images"] == run.corrupt_images
    again, lines = _run(tmp_path, data, **{"data.skip_corrupt": True})  # from the cache: the same names
    assert again.train_set.from_cache and again.corrupt_images == run.corrupt_images


@pytest.mark.parametrize("bad", ["empty", "not_tar", "truncated_xz"])
def test_unreadable_archive_is_one_line_naming_file_and_layout(tmp_path, bad):
    from fastpnr.errors import DataError
    from tests.data.utils import write_tar

    path = tmp_path / ("train.tar" if bad != "truncated_xz" else "train.tar.xz")
    if bad == "empty":
        path.write_bytes(b"")
    elif bad == "not_tar":
        path.write_bytes(b"PK\3\4 not really a zip either" * 40)
    else:
        write_tar(tmp_path / "full.tar.xz", "train", {f"a/{i}.jpg": jpeg_bytes(i) for i in range(30)})
        path.write_bytes((tmp_path / "full.tar.xz").read_bytes()[:600])
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and f"cannot read archive {path}" in msg and "<split>/<class>/<file>" in msg
    assert ("empty (0 bytes)" in msg) == (bad == "empty") and "method gz" not in msg


def test_split_with_no_images_says_what_was_skipped(tmp_path):
    from fastpnr.errors import DataError

    write_tree(tmp_path, "train", {"zebra/notes.txt": b"x", "yak/0.jpg": b""})
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and "holds no images" in msg and "notes.txt" in msg and "0.jpg" in msg
    assert "train/<class>/<file>" in msg
