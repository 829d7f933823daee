"""Read back what wandb wrote offline: the records of a run's ``run-<id>.wandb`` transaction log.

The file is a LevelDB-style log (github.com/google/leveldb doc/log_format.md): a 7-byte header (ident ":W&B", a
little-endian uint16 magic, a version byte), then 32 KiB blocks of chunks, each a 7-byte header (CRC-32 of the type
byte and the data, uint16 length, type: 1 full, 2 first, 3 middle, 4 last) and its data; a block's last < 7 bytes are
zero padding. Each whole record is a ``wandb_internal_pb2.Record`` protobuf (wandb's own message definitions).
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    """Every Record of a .wandb file, in order (CRC-checked; a torn tail, as a kill leaves it, ends the list)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    records, parts, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            break  # a record cut short
        parts.append(chunk)
        if kind in (FULL, LAST):
            records.append(wandb_internal_pb2.Record.FromString(b"".join(parts)))
            parts = []
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


class OfflineRun:
    """The run id, group, config, history rows and summary of one offline run folder (``offline-run-*``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        (log,) = self.folder.glob("run-*.wandb")
        self.records = read_records(log)
        runs = [r.run for r in self.records if r.WhichOneof("record_type") == "run"]
        # a process killed early may leave no run record; wandb names the folder offline-run-<time>-<id>
        self.run_id = runs[0].run_id if runs else self.folder.name.rsplit("-", 1)[1]
        self.group, self.project = (runs[0].run_group, runs[0].project) if runs else (None, None)
        self.config = {_key(i): json.loads(i.value_json) for i in runs[0].config.update} if runs else {}
        self.history = [{_key(i): json.loads(i.value_json) for i in r.history.item}
                        for r in self.records if r.WhichOneof("record_type") == "history"]
        self.summary: dict = {}
        for r in self.records:
            if r.WhichOneof("record_type") == "summary":
                for i in r.summary.update:
                    self.summary[_key(i)] = json.loads(i.value_json)
        self.finished = any(r.WhichOneof("record_type") == "exit" for r in self.records)

    def series(self, tag: str, axis: str) -> dict:
        """{step: value} of ``tag`` against its step metric ``axis``."""
        return {row[axis]: row[tag] for row in self.history if tag in row}


def offline_runs(root: Path, finished: int | None = None, timeout_s: float = 120.0) -> list[OfflineRun]:
    """The offline runs under ``root`` (a run folder's ``wandb/`` or WANDB_DIR's), oldest first. wandb's service
    process writes the log after ``run.finish()`` returns: wait (up to ``timeout_s``) until the last ``finished``
    runs (default: all) hold their exit record."""
    deadline = time.monotonic() + timeout_s
    while True:
        folders = sorted(f for f in Path(root).glob("**/offline-run-*") if f.is_dir())
        runs = [OfflineRun(f) for f in folders]
        wanted = len(folders) if finished is None else finished
        if all(r.finished for r in runs[len(runs) - wanted:]):
            return runs
        if time.monotonic() > deadline:
            raise AssertionError(f"wandb did not finish writing the runs under {root} within {timeout_s:.0f} s")
        time.sleep(0.5)
