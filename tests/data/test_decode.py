"""Corrupt and truncated images: a one-line DataError naming archive and member, or skipped and counted."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFile

import fastpnr.data.decode as decode
from fastpnr.data import load_dataset
from fastpnr.errors import DataError
from tests.data.utils import jpeg_bytes, write_tar


def _archive_with_truncated_jpeg(tmp_path):
    good = {f"cls{i % 2}/{i:03d}.jpg": jpeg_bytes(i, size=(16, 16)) for i in range(6)}
    good["cls1/003.jpg"] = good["cls1/003.jpg"][: len(good["cls1/003.jpg"]) // 2]
    return write_tar(tmp_path / "train.tar.xz", "train", good)


def test_truncated_jpeg_names_archive_and_member(tmp_path, monkeypatch):
    archive = _archive_with_truncated_jpeg(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # must not hide truncation
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert f"corrupt image 'train/cls1/003.jpg' in {archive}" in msg and "skip" in msg and "\n" not in msg
    assert "truncated: the JPEG data ends before the image does" in msg and msg.count("003.jpg") == 1
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_skip_corrupt_counts_and_caches(tmp_path):
    _archive_with_truncated_jpeg(tmp_path)
    ds = load_dataset("imagefolder", "train", tmp_path, skip_corrupt=True, cache_dir=tmp_path / "cache")
    assert ds.num_corrupt == 1 and len(ds) == 5 and ds.images.shape == (5, 16, 16, 3)
    assert not any(m.endswith("003.jpg") for m in ds.members) and ds.labels.tolist() == [0, 0, 0, 1, 1]
    again = load_dataset("imagefolder", "train", tmp_path, skip_corrupt=True, cache_dir=tmp_path / "cache")
    assert again.from_cache and again.num_corrupt == 1 and np.array_equal(again.images, ds.images)
    with pytest.raises(DataError, match="003.jpg"):  # a cached split still refuses corrupt images by default
        load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")


def test_worker_pool_path_matches_inline(tmp_path, monkeypatch):
    files = {f"c{i % 3}/{i:03d}.jpg": jpeg_bytes(i) for i in range(40)}
    files["c1/not-an-image.jpg"] = b"garbage"
    write_tar(tmp_path / "train.tar", "train", files, mode="w")
    inline = load_dataset("imagefolder", "train", tmp_path, skip_corrupt=True, cache_dir=tmp_path / "c1")
    monkeypatch.setattr(decode, "INLINE_MAX", 4)
    monkeypatch.setattr(decode, "CHUNK", 5)
    monkeypatch.setattr(decode, "decode_workers", lambda: 2)  # a quiet machine: a pool of 2
    pooled = load_dataset("imagefolder", "train", tmp_path, skip_corrupt=True, cache_dir=tmp_path / "c2",
                          progress=True)
    assert np.array_equal(inline.images, pooled.images) and inline.members == pooled.members
    assert pooled.num_corrupt == 1 and len(pooled) == 40
    # a busy machine (the load leaves one core): the same images decoded chunk by chunk in this process
    monkeypatch.setattr(decode, "decode_workers", lambda: 1)
    monkeypatch.setattr(decode, "_decode_in_pool", lambda *a: pytest.fail("no pool with one free core"))
    chunked = load_dataset("imagefolder", "train", tmp_path, skip_corrupt=True, cache_dir=tmp_path / "c3")
    assert np.array_equal(inline.images, chunked.images) and inline.members == chunked.members
    assert chunked.num_corrupt == 1


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data, says", [
    (b"hello, not an image", "not a decodable image (19 bytes; not JPEG, PNG or another format PIL reads)"),
    (_png_bytes()[:60], "truncated: the PNG data ends before the image does (60 bytes)"),
    (jpeg_bytes(0)[:20], "a JPEG file whose header is damaged or cut short (20 bytes)")])
def test_an_undecodable_file_is_named_once_and_said_what_is_wrong_without_a_python_repr(tmp_path, data, says):
    files = {f"cls{i % 2}/{i:03d}.jpg": jpeg_bytes(i) for i in range(4)}
    files["cls0/bad.jpg"] = data
    archive = write_tar(tmp_path / "train.tar", "train", files, mode="w")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", "train", tmp_path, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert msg.startswith(f"corrupt image 'train/cls0/bad.jpg' in {archive}: {says}")
    assert "object at 0x" not in msg and "BytesIO" not in msg and msg.count("bad.jpg") == 1 and "\n" not in msg
