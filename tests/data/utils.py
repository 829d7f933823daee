"""Builders for the data tests: tiny synthetic JPEGs, class-folder trees and tar archives."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int, size=(8, 8), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[0], size[1], 3) if mode == "RGB" else size
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_tree(root: Path, split: str, files: dict[str, bytes]) -> Path:
    """files: {"<class>/<file>": bytes} written as root/split/<class>/<file>."""
    for rel, data in files.items():
        path = root / split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root / split


def write_tar(path: Path, prefix: str, files: dict[str, bytes], mode="w:xz") -> Path:
    """A tar archive with members "<prefix>/<class>/<file>" sorted by name, as in shared/data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:
        for rel in sorted(files):
            info = tarfile.TarInfo(f"{prefix}/{rel}")
            info.size = len(files[rel])
            tf.addfile(info, io.BytesIO(files[rel]))
    return path
