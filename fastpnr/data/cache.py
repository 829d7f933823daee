"""On-disk cache of decoded splits: images.npy, labels.npy, domain_ids.npy and meta.json in one folder.

The folder name carries a hash of (dataset, split, image size, the source files' paths, sizes and mtimes), so a
changed source file is a cache miss. A folder is written under a temporary name and renamed into place, so a
reader never sees half a cache. Images are loaded with mmap (copy-on-write), so a cache hit costs milliseconds.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


def cache_root(cache_dir=None) -> Path:
    """`cache_dir`, else `$FASTPNR_CACHE`, else `~/.cache/fastpnr`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("FASTPNR_CACHE") or Path.home() / ".cache" / "fastpnr").expanduser()


def cache_folder(root: Path, name: str, split: str, size, files: list[Path]) -> Path:
    """`<root>/<name>/<split>-<HxW|native>-<hash>`; the hash covers every input file's path, size and mtime."""
    stats = []
    for f in files:
        st = f.stat()
        stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    dims = [size[0], size[1]] if size else None
    mode = getattr(size, "mode", "stretch")
    if dims and mode != "stretch":  # stretch keys stay as they were: existing caches remain valid
        dims.append(mode)
    key = json.dumps([FORMAT_VERSION, name, split, dims, stats])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    tag = (f"{size[0]}x{size[1]}" + ("" if mode == "stretch" else f"-{mode}")) if size else "native"
    return root / name / f"{split}-{tag}-{digest}"


def load(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict] | None:
    """(images (mmap), labels, domain_ids or None, meta) or None when there is no complete cache."""
    if not (folder / "meta.json").is_file():
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text())
        images = np.load(folder / "images.npy", mmap_mode="c")  # "c": writable view, the file never changes
        labels = np.load(folder / "labels.npy")
        domain_ids = np.load(folder / "domain_ids.npy") if (folder / "domain_ids.npy").is_file() else None
    except (OSError, ValueError) as e:
        warnings.warn(f"ignoring unreadable cache {folder}: {e}", stacklevel=3)
        return None
    return images, labels, domain_ids, meta


def save(folder: Path, images: np.ndarray, labels: np.ndarray, domain_ids: np.ndarray | None, meta: dict) -> bool:
    """Write the cache atomically (temporary folder, then os.replace); warn and return False if it cannot."""
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        np.save(tmp / "images.npy", images)
        np.save(tmp / "labels.npy", labels)
        if domain_ids is not None:
            np.save(tmp / "domain_ids.npy", domain_ids)
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, folder)
        return True
    except OSError as e:  # read-only cache dir, disk full, or another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").is_file():
            warnings.warn(f"could not write the decode cache {folder}: {e}; set $FASTPNR_CACHE or cache_dir",
                          stacklevel=3)
        return False
