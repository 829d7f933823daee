"""Atomic files: each is written to a hidden temporary file beside its target, ``.<name>.<8 hex>.tmp``, then renamed
over it (``os.replace``), so a reader (``fastpnr study --status``, another study, a resume) or a run killed mid-write
sees the old file or the new one, never half of one. Imports neither torch nor numpy: the run-folder checks that
run before torch loads use ``temporary_target``.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from pathlib import Path

_TEMPORARY = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{8}\.tmp")


def temporary_name(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (unique: two writers of one file never share one)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def temporary_target(name: str) -> str | None:
    """The file a temporary name left by a write cut short was for (``.metrics.json.1a2b3c4d.tmp`` ->
    ``metrics.json``); None for any other name."""
    m = _TEMPORARY.fullmatch(name)
    return m.group("target") if m else None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", fsync: bool = False):
    """An open file (``mode`` "w" or "wb") whose contents replace ``path`` when the block ends without an exception;
    on an exception (Ctrl-C included) ``path`` is left as it was and the temporary file is removed. ``fsync``: flushed
    to the disk before the rename (checkpoints: a power cut must not leave a renamed but empty file). The file gets
    the permissions of a plain ``open`` (the umask's), as the file it replaces had."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file mode {mode!r}: 'w' or 'wb' allowed")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """``obj`` as JSON, atomically; numpy and torch scalars and arrays as numbers and lists, anything else
    as its ``str``."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=indent, default=_plain)


def _plain(o):
    if hasattr(o, "tolist"):  # numpy scalars and arrays, torch tensors: without importing either
        return o.tolist()
    return str(o)
