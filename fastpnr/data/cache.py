"""On-disk cache of decoded splits: images.npy, labels.npy, domain_ids.npy and meta.json in one folder.

The folder name carries a hash of (dataset, split, image size, the content of the source), not of its paths, so a copy
of the same data elsewhere is a cache hit and a changed source is a miss (`source_key`). A folder is written under a
temporary name and renamed into place, so a reader never sees half a cache. Images are loaded with mmap
(copy-on-write), so a cache hit costs milliseconds. A hit touches meta.json: its mtime is the entry's last use, which
`entries` reports and `evict` uses (least recently used first); `fastpnr cache` lists and evicts.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastpnr.system.atomic import write_json

FORMAT_VERSION = 2  # 2: keys on content (1 keyed on paths and mtimes)
HASH_MEMO = "content-hashes.json"
HASH_MEMO_MAX = 4096  # files remembered; the least recently used are forgotten (then hashed again when seen)
BETONS = "betons"  # .beton files written for the ffcv loader, beside the decoded splits
HASH_BLOCK = 1 << 22


def cache_root(cache_dir=None) -> Path:
    """`cache_dir`, else `$FASTPNR_CACHE`, else `~/.cache/fastpnr`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("FASTPNR_CACHE") or Path.home() / ".cache" / "fastpnr").expanduser()


# ----------------------------------------------------------------------------------------------- keys
def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_digests(paths: list[Path], root: Path) -> list[str]:
    """sha256 of each file's bytes, remembered in `<root>/content-hashes.json` by (path, size, mtime, ctime, inode):
    the ctime changes with every write and cannot be set back, so a file rewritten in place is hashed again.

    Archives are hashed in full (exact: any changed byte is a miss), once per file version: CIFAR-10's 15 MB
    train.tar.xz took 80 ms on the shared 2-core dev machine under load (0.2-0.3 GB/s), against seconds to decode
    it; later loads of an unchanged file only stat it.
    """
    memo_path = root / HASH_MEMO
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    out, changed = [], False
    for p in paths:
        st = p.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        key = str(p.resolve())
        known = memo.get(key)
        if not isinstance(known, list) or len(known) < 6 or known[:4] != stamp:
            known, changed = [*stamp, _hash_file(p)], True
        memo[key] = known[:5] + [time.time()]
        out.append(known[4])
    if changed:
        recent = sorted(memo.items(), key=lambda kv: kv[1][5], reverse=True)[:HASH_MEMO_MAX]
        _write_json_atomic(memo_path, dict(recent))
    return out


def _tree_listing(files: list[Path], base: Path) -> list:
    """[relative path, size, mtime] per file: a folder tree (up to millions of images) is keyed by its listing,
    not its bytes, which would mean reading every image on every load; a copy made with its timestamps
    (cp -a, rsync -a) is a hit, an edited or added image a miss."""
    out = []
    for f in files:
        st = f.stat()
        out.append([f.relative_to(base).as_posix() if f.is_relative_to(base) else f.name, st.st_size, st.st_mtime_ns])
    return out


def _folder_files(folder: Path) -> list[Path]:
    return sorted(Path(d) / n for d, _, names in os.walk(folder) for n in names)


def source_key(files: list[Path], location: Path, tree: bool, root: Path) -> list:
    """What identifies a source's content: per archive/list file its sha256 (`file_digests`), per folder (or for a
    `tree` source, the image files themselves) the listing of relative names, sizes and mtimes."""
    if tree:
        return [_tree_listing(files, location)]
    digests = iter(file_digests([f for f in files if not f.is_dir()], root))
    return [_tree_listing(_folder_files(f), f) if f.is_dir() else next(digests) for f in files]


def cache_folder(root: Path, name: str, split: str, size, key: list) -> Path:
    """`<root>/<name>/<split>-<HxW|native>[-mode]-<hash>`; the hash covers `key` (`source_key`) and the size."""
    dims = [size[0], size[1]] if size else None
    mode = getattr(size, "mode", "stretch")
    if dims and mode != "stretch":
        dims.append(mode)
    blob = json.dumps([FORMAT_VERSION, name, split, dims, key])
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return root / name / f"{split}-{size_tag(size)}-{digest}"


def size_tag(size) -> str:
    """"32x32", "224x224-center" or "native"."""
    if not size:
        return "native"
    mode = getattr(size, "mode", "stretch")
    return f"{size[0]}x{size[1]}" + ("" if mode == "stretch" else f"-{mode}")


# ----------------------------------------------------------------------------------------------- read / write
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
    try:
        os.utime(folder / "meta.json")  # last use, for `fastpnr cache` and least-recently-used eviction
    except OSError:  # a read-only cache still serves hits
        pass
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
            warnings.warn(f"could not write the decode cache {folder}: {e}; set $FASTPNR_CACHE or "
                          f"--data.cache_dir DIR to a writable folder", stacklevel=3)
        return False


def _write_json_atomic(path: Path, obj) -> None:
    try:
        write_json(path, obj, indent=None)
    except OSError:  # a read-only cache: hashes are recomputed next time
        pass


# ----------------------------------------------------------------------------------------------- list / evict
@dataclass
class Entry:
    """One cache entry: a decoded split folder, a .beton file, or a partial folder left by an interrupted write."""

    path: Path
    kind: str  # "decoded" | "beton" | "partial"
    dataset: str
    split: str
    image_size: str
    num_images: int | None
    bytes: int
    last_used: float  # seconds since the epoch


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in _folder_files(path) if f.is_file())


def _decoded_entry(folder: Path) -> Entry:
    split, _, rest = folder.name.partition("-")
    tag = rest.rsplit("-", 1)[0]  # <split>-<tag>-<hash>; meta.json of format 2 says it directly
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    n = meta.get("num_images", len(meta["members"]) if "members" in meta else None)
    return Entry(folder, "decoded", meta.get("dataset", folder.parent.name), meta.get("split", split),
                 meta.get("image_size", tag), n, _size_on_disk(folder), meta_path.stat().st_mtime)


def entries(root: Path) -> list[Entry]:
    """Every entry under `root`, most recently used first. Only fastpnr's own files are listed (and evicted):
    `<dataset>/<split>-...` folders with a meta.json, `betons/*.beton`, and `.<name>.tmp-*` leftovers."""
    out = []
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name == BETONS:
            for b in sorted(d.glob("*.beton")):
                st = b.stat()
                out.append(Entry(b, "beton", b.stem.split("-")[0], "", "", None, st.st_size,
                                 max(st.st_mtime, st.st_atime)))
            continue
        for f in sorted(p for p in d.iterdir() if p.is_dir()):
            if (f / "meta.json").is_file():
                out.append(_decoded_entry(f))
            elif f.name.startswith(".") and ".tmp-" in f.name:
                out.append(Entry(f, "partial", d.name, "", "", None, _size_on_disk(f), f.stat().st_mtime))
    return sorted(out, key=lambda e: e.last_used, reverse=True)


def remove(entry: Entry) -> None:
    if entry.path.is_dir():
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        entry.path.unlink(missing_ok=True)
    parent = entry.path.parent
    if parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()


def to_evict(found: list[Entry], *, clear: bool = False, older_than_days: float | None = None,
             max_bytes: float | None = None, now: float | None = None) -> list[Entry]:
    """The entries to remove: all (`clear`), those unused for more than `older_than_days`, then the least
    recently used until the rest fits in `max_bytes`."""
    if clear:
        return list(found)
    now = time.time() if now is None else now
    keep = sorted(found, key=lambda e: e.last_used, reverse=True)
    out = []
    if older_than_days is not None:
        out = [e for e in keep if now - e.last_used > older_than_days * 86400]
        keep = [e for e in keep if e not in out]
    if max_bytes is not None:
        while keep and sum(e.bytes for e in keep) > max_bytes:
            out.append(keep.pop())
    return out
