"""Layouts and failure messages on tiny synthetic data: imagefolder trees and archives, CIFAR pickles,
missing data, damaged archives, downloads."""
from __future__ import annotations

import pickle
import urllib.error

import numpy as np
import pytest

from fastpnr.data import load_dataset, resolve_data_root
from fastpnr.errors import ConfigError, DataError
from tests.data.utils import jpeg_bytes, write_tar, write_tree

FILES = {f"{c}/{i:02d}.jpg": jpeg_bytes(10 * k + i) for k, c in enumerate(["cat", "ant", "bee"]) for i in range(3)}


def test_imagefolder_folder_tree(tmp_path):
    write_tree(tmp_path, "train", FILES)
    ds = load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.classes == ["ant", "bee", "cat"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.images.shape == (9, 8, 8, 3) and ds.images.dtype == np.uint8
    assert ds.members[0].endswith("train/ant/00.jpg")


def test_imagefolder_is_found_in_data_dir_slash_imagefolder_as_cifar10_in_data_dir_slash_cifar10(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert f"looked in: {tmp_path / 'imagefolder'}, {tmp_path};" in str(e.value)
    write_tree(tmp_path / "imagefolder", "train", FILES)
    ds = load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.classes == ["ant", "bee", "cat"] and ds.members[0].endswith("imagefolder/train/ant/00.jpg")


def test_imagefolder_tar_xz_matches_folder_and_resizes(tmp_path):
    write_tree(tmp_path / "a", "train", FILES)
    write_tar(tmp_path / "b" / "train.tar.xz", "train", FILES)
    folder = load_dataset("imagefolder", "train", tmp_path / "a", cache_dir=tmp_path / "cache")
    archive = load_dataset("imagefolder", "train", tmp_path / "b", cache_dir=tmp_path / "cache")
    assert np.array_equal(folder.images, archive.images) and np.array_equal(folder.labels, archive.labels)
    assert archive.members[0] == f"{tmp_path / 'b' / 'train.tar.xz'}::train/ant/00.jpg"
    big = load_dataset("imagefolder", "train", tmp_path / "b", image_size=12, cache_dir=tmp_path / "cache")
    assert big.images.shape == (9, 12, 12, 3)


def test_grayscale_becomes_rgb_and_decode_false_keeps_bytes(tmp_path):
    files = {"a/0.jpg": jpeg_bytes(1, mode="L"), "b/0.jpg": jpeg_bytes(2)}
    write_tar(tmp_path / "val.tar", "val", files, mode="w")
    ds = load_dataset("imagefolder", "val", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.images.shape == (2, 8, 8, 3)
    raw = load_dataset("imagefolder", "val", tmp_path, decode=False)
    assert raw.images is None and raw.encoded(0) == files["a/0.jpg"] and np.array_equal(raw.image(0), ds.images[0])


def test_mixed_sizes_need_image_size(tmp_path):
    write_tree(tmp_path, "train", {"a/0.jpg": jpeg_bytes(1), "b/0.jpg": jpeg_bytes(2, size=(8, 16))})  # 8 high, 16 wide
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "b/0.jpg' is 16x8 (width x height) but earlier images are 8x8" in msg  # as PIL's Image.size says
    assert "--data.image_size N" in msg and "\n" not in msg
    ds = load_dataset("imagefolder", "train", tmp_path, image_size=(6, 10), cache_dir=tmp_path / "cache")
    assert ds.images.shape == (2, 6, 10, 3)


def _write_cifar10_pickles(folder, n=7):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [i % 10 for i in range(n)]
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": data, b"labels": labels}))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data[:3], b"labels": labels[:3]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return data, labels


def test_cifar_python_pickles(tmp_path):
    data, labels = _write_cifar10_pickles(tmp_path / "cifar10" / "cifar-10-batches-py")
    ds = load_dataset("cifar10", "train", tmp_path, cache_dir=tmp_path / "cache")
    assert ds.images.shape == (7, 32, 32, 3) and ds.labels.tolist() == labels and ds.classes[9] == "truck"
    # official layout: 1024 red, then 1024 green, then 1024 blue values, rows of 32
    assert np.array_equal(ds.images[2, 5, 7], data[2, [5 * 32 + 7, 1024 + 5 * 32 + 7, 2048 + 5 * 32 + 7]])
    assert len(load_dataset("cifar10", "test", tmp_path, cache_dir=tmp_path / "cache")) == 3
    assert load_dataset("cifar10", "train", tmp_path, cache_dir=tmp_path / "cache").from_cache


def test_missing_dataset_lists_the_places_looked(tmp_path, monkeypatch):
    with pytest.raises(DataError) as e:
        load_dataset("pacs", "train", tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "nowhere" / "pacs") in msg and str(tmp_path / "nowhere") in msg
    monkeypatch.setenv("FASTPNR_DATA", str(tmp_path / "env"))
    assert resolve_data_root() == tmp_path / "env"
    with pytest.raises(DataError, match="download=True"):
        load_dataset("cifar10", "train")


def test_failed_download_names_the_url(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError, match=r"could not download https://www\.cs\.toronto\.edu/~kriz/cifar-10-python"):
        load_dataset("cifar10", "train", tmp_path, download=True)
    assert not list(tmp_path.iterdir())  # no cifar10/ folder left in the data dir


class _Broken:
    """A response that delivers ``good`` bytes, then fails as ``error`` (a dropped connection, a Ctrl-C)."""

    def __init__(self, good: bytes, error: BaseException):
        self.parts, self.error = [good], error

    def read(self, n=-1):
        if self.parts:
            return self.parts.pop()
        raise self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("error", [ConnectionResetError("connection reset by peer"), KeyboardInterrupt()],
                         ids=["dropped", "ctrl-c"])
def test_a_download_cut_short_leaves_neither_its_file_nor_the_folders_it_made(tmp_path, monkeypatch, error):
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: _Broken(b"\x1f\x8b partial", error))
    root = tmp_path / "new" / "data"  # neither exists: the download would create both and cifar10/
    with pytest.raises(DataError if isinstance(error, OSError) else KeyboardInterrupt):
        load_dataset("cifar10", "train", root, download=True)
    assert not (tmp_path / "new").exists()
    # A folder that was there before stays, with what it held (only the partial file goes).
    (tmp_path / "mine" / "cifar10").mkdir(parents=True)
    (tmp_path / "mine" / "cifar10" / "notes.txt").write_text("mine")
    with pytest.raises(DataError if isinstance(error, OSError) else KeyboardInterrupt):
        load_dataset("cifar10", "train", tmp_path / "mine", download=True)
    assert [p.name for p in (tmp_path / "mine" / "cifar10").iterdir()] == ["notes.txt"]


def test_bad_archive_empty_split_missing_domain_and_bad_args(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.tar.xz").write_bytes(b"this is not xz")
    with pytest.raises(DataError, match="cannot read archive .*train.tar.xz"):
        load_dataset("imagefolder", "train", tmp_path / "bad", cache_dir=tmp_path / "cache")
    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        load_dataset("imagefolder", "train", tmp_path / "empty", cache_dir=tmp_path / "cache")
    write_tar(tmp_path / "pacs" / "photo.tar.xz", "photo", {"dog/0.jpg": jpeg_bytes(0)})
    with pytest.raises(DataError, match="PACS domain 'art_painting' is missing"):
        load_dataset("pacs", "test", tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="split='valid'"):
        load_dataset("cifar10", "valid", tmp_path)
    with pytest.raises(ConfigError, match="dataset='cifar11'"):
        load_dataset("cifar11", "train", tmp_path)
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("imagefolder", "train", tmp_path, image_size=0)


def test_zip_split_archive_matches_folder(tmp_path):
    import zipfile

    write_tree(tmp_path / "a", "train", FILES)
    (tmp_path / "b").mkdir()
    with zipfile.ZipFile(tmp_path / "b" / "train.zip", "w") as zf:
        zf.writestr("train/", b"")
        for rel in sorted(FILES):
            zf.writestr(f"train/{rel}", FILES[rel])
    folder = load_dataset("imagefolder", "train", tmp_path / "a", cache_dir=tmp_path / "cache")
    archive = load_dataset("imagefolder", "train", tmp_path / "b", cache_dir=tmp_path / "cache")
    assert np.array_equal(folder.images, archive.images) and archive.classes == folder.classes
    assert archive.members[0] == f"{tmp_path / 'b' / 'train.zip'}::train/ant/00.jpg" and not archive.skipped.total()


def test_error_hints_use_the_cli_form():
    """Every hint in an error message names an option the way it is typed (`--section.field VALUE`), not as a
    Python keyword (`image_size=N`, `skip_corrupt=True`) unless it also gives the CLI form."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    python_form = re.compile(r"\b(pass|set|use|lower|raise) [a-z_]+(\.[a-z_]+)?(=| to )\S")
    bad = []
    for path in [*root.glob("fastpnr/**/*.py"), *root.glob("loaders/*.py"), *root.glob("scripts/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) or (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "warn"):
                text = "".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))
                if python_form.search(text) or re.search(r"\b[a-z_]+=N\b", text) and "--" not in text:
                    bad.append(f"{path.relative_to(root)}:{node.lineno}: {text[:100]}")
    assert not bad, bad
