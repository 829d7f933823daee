"""The decode cache: keyed on content (a copy elsewhere hits, a change misses), listed and evicted by `fastpnr cache`."""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest

from fastpnr.cli import main as fastpnr
from fastpnr.data import cache, load_dataset
from tests.data.utils import jpeg_bytes, write_tar, write_tree

FILES = {f"{c}/{i}.jpg": jpeg_bytes(10 * k + i) for k, c in enumerate(["ant", "bee"]) for i in range(3)}


def _entries(root):
    return [e for e in cache.entries(root) if e.kind == "decoded"]


def test_same_archive_in_another_folder_hits_the_cache(tmp_path, monkeypatch):
    write_tar(tmp_path / "a" / "train.tar.xz", "train", FILES)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # copytree keeps mtimes: touch the copy so only content matches
    os.utime(tmp_path / "b" / "train.tar.xz", (1, 1))
    first = load_dataset("imagefolder", "train", tmp_path / "a", cache_dir=tmp_path / "cache")
    decoded = []
    monkeypatch.setattr("fastpnr.data.dataset.read_entries", lambda *a, **k: decoded.append(1))
    copy = load_dataset("imagefolder", "train", tmp_path / "b", cache_dir=tmp_path / "cache")
    assert copy.from_cache and not decoded and np.array_equal(copy.images, first.images)
    assert copy.members[0] == f"{tmp_path / 'b' / 'train.tar.xz'}::train/ant/0.jpg"  # named where it is now
    assert len(_entries(tmp_path / "cache")) == 1


def test_changed_content_of_same_size_and_path_misses(tmp_path):
    write_tar(tmp_path / "train.tar", "train", FILES, mode="w")
    before = load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    stat = (tmp_path / "train.tar").stat()
    swapped = {**FILES, "ant/0.jpg": FILES["bee/0.jpg"], "bee/0.jpg": FILES["ant/0.jpg"]}  # same bytes, other order
    write_tar(tmp_path / "train.tar", "train", swapped, mode="w")
    os.utime(tmp_path / "train.tar", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (tmp_path / "train.tar").stat().st_size == stat.st_size
    after = load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert not after.from_cache and np.array_equal(after.images[0], before.images[3])


def test_folder_tree_copied_with_timestamps_hits(tmp_path):
    write_tree(tmp_path / "a", "train", FILES)
    load_dataset("imagefolder", "train", tmp_path / "a", cache_dir=tmp_path / "cache")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # copy2: timestamps kept (cp -a, rsync -a)
    copy = load_dataset("imagefolder", "train", tmp_path / "b", cache_dir=tmp_path / "cache")
    assert copy.from_cache and copy.members[0] == str(tmp_path / "b" / "train" / "ant" / "0.jpg")
    (tmp_path / "b" / "train" / "bee" / "3.jpg").write_bytes(jpeg_bytes(99))
    assert len(load_dataset("imagefolder", "train", tmp_path / "b", cache_dir=tmp_path / "cache")) == 7


def _fake_entry(root, dataset, split, nbytes, age_days, now):
    folder = root / dataset / f"{split}-16x16-{dataset[:4]}{split}"
    folder.mkdir(parents=True)
    (folder / "images.npy").write_bytes(b"\0" * nbytes)
    meta = {"format": 2, "dataset": dataset, "split": split, "image_size": "16x16", "num_images": 5}
    (folder / "meta.json").write_text(json.dumps(meta))
    t = now - age_days * 86400
    os.utime(folder / "meta.json", (t, t))
    return folder


def test_entries_and_eviction_order(tmp_path):
    now = time.time()
    old = _fake_entry(tmp_path, "cifar10", "train", 3000, 40, now)
    mid = _fake_entry(tmp_path, "cifar10", "test", 2000, 10, now)
    new = _fake_entry(tmp_path, "pacs", "train", 1000, 1, now)
    (tmp_path / "betons").mkdir()
    (tmp_path / "betons" / "cifar10-train-16-50.beton").write_bytes(b"\0" * 500)
    (tmp_path / "unrelated.txt").write_text("not ours")
    found = cache.entries(tmp_path)
    assert [e.path for e in found if e.kind == "decoded"] == [new, mid, old]  # most recently used first
    assert {e.kind for e in found} == {"decoded", "beton"} and found[0].kind == "beton"
    assert [e.path for e in cache.to_evict(found, older_than_days=30, now=now)] == [old]
    by_size = cache.to_evict(found, max_bytes=3600, now=now)  # the least recently used go first
    assert [e.path for e in by_size] == [old, mid]
    assert len(cache.to_evict(found, clear=True)) == 4


def test_cache_command_lists_and_evicts(tmp_path, capsys):
    write_tar(tmp_path / "data" / "train.tar", "train", FILES, mode="w")
    load_dataset("imagefolder", "train", tmp_path / "data", cache_dir=tmp_path / "cache", image_size=12)
    now = time.time()
    stale = _fake_entry(tmp_path / "cache", "cifar10", "train", 4000, 90, now)
    (tmp_path / "cache" / "notes.txt").write_text("keep me")
    fastpnr(["cache", "--cache_dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert f"decode cache: {tmp_path / 'cache'}" in out and "total: 2 entries" in out
    row = next(line for line in out.splitlines() if line.startswith("imagefolder"))
    assert row.split()[:4] == ["imagefolder", "train", "12x12", "6"] and "min ago" in row
    fastpnr(["cache", "--cache_dir", str(tmp_path / "cache"), "--clear_older_than", "30"])
    out = capsys.readouterr().out
    assert f"removed {stale}" in out and not stale.exists() and "total: 1 entries" in out
    fastpnr(["cache", "--cache_dir", str(tmp_path / "cache"), "--clear"])
    assert "total: 0 entries" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [cache.HASH_MEMO, "notes.txt"]  # not ours: kept


def test_cache_command_bad_value_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        fastpnr(["cache", "--cache_dir", str(tmp_path), "--max_size", "-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --max_size=-1 is invalid") and "\n" not in err
