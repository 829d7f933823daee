"""Decode encoded images into one uint8 (N, H, W, 3) array, in worker processes when there are many.

Measured on a 2-core machine (CIFAR-10 train, 50,000 32x32 JPEGs): reading the .tar.xz takes ~2.3 s and
decoding in one process ~3.5 s; worker processes decode while the main process keeps reading the archive.
Above INLINE_MAX images a pool is used (see `_decode_in_pool` for the timings).
"""
from __future__ import annotations

import io
import multiprocessing as mp
import re
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from fastpnr.errors import DataError

CHUNK = 1024            # images per worker task
INLINE_MAX = 4096       # up to this many images, decoding in-process beats starting workers
MAX_IN_FLIGHT = 6       # chunks queued per pool, bounds memory while reading ahead
RESIZE_MODES = ("stretch", "center")
# "center": the anchors' evaluation transform (torchvision Resize(256) + CenterCrop(224)), scaled to any size
CENTER_RESIZE_RATIO = 256 / 224


class Resize(NamedTuple):
    """Target (height, width) of decoded images and how to get there: "stretch" resizes the whole image to it
    (aspect ratio not kept); "center" resizes the shorter side to round(height * 256 / 224) and crops the centre,
    as the anchors evaluate ImageNet-100 and DomainNet (torchvision Resize + CenterCrop semantics)."""

    height: int
    width: int
    mode: str = "stretch"


def resize_image(rgb: Image.Image, size) -> Image.Image:
    """PIL RGB image -> (size[0], size[1]) by ``size.mode`` (a plain (H, W) tuple stretches). Bicubic."""
    h, w = size[0], size[1]
    if getattr(size, "mode", "stretch") == "center":
        short = int(round(h * CENTER_RESIZE_RATIO))
        iw, ih = rgb.size
        # torchvision Resize(int): the shorter side becomes `short`, the longer int(short * long / short_in)
        nw, nh = (short, int(short * ih / iw)) if iw <= ih else (int(short * iw / ih), short)
        if (nw, nh) != (iw, ih):
            rgb = rgb.resize((nw, nh), Image.BICUBIC)
        top, left = int(round((nh - h) / 2.0)), int(round((nw - w) / 2.0))  # torchvision CenterCrop
        return rgb.crop((left, top, left + w, top + h))
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.BICUBIC)
    return rgb


@contextmanager
def _strict_truncation():
    """Truncated files must fail to decode, never come back half grey (PIL's LOAD_TRUNCATED_IMAGES)."""
    before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def decode_image(data: bytes, size: tuple[int, int] | Resize | None = None) -> np.ndarray:
    """Encoded bytes -> uint8 (H, W, 3); RGB always; resized to size=(H, W) when given (``resize_image``)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # raises on truncated data while LOAD_TRUNCATED_IMAGES is False
        rgb = img.convert("RGB")
    if size is not None:
        rgb = resize_image(rgb, size)
    return np.asarray(rgb)


def resize_array(images: np.ndarray, size: tuple[int, int] | Resize) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, size[0], size[1], 3), image by image (``resize_image``)."""
    if images.shape[1:3] == tuple(size[:2]) and getattr(size, "mode", "stretch") == "stretch":
        return images
    return np.stack([np.asarray(resize_image(Image.fromarray(x), size)) for x in images])


# The leading bytes of the formats a user most likely meant, to say "a damaged JPEG" rather than "not an image".
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"RIFF": "WebP"}


def decode_failure(error: Exception, data: bytes) -> str:
    """What is wrong with ``data`` that failed to decode with ``error``, in words (no Python object repr)."""
    size = f"{len(data)} bytes"
    fmt = next((name for sig, name in SIGNATURES.items() if data.startswith(sig)), None)
    text = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the file", str(error))
    if not data:
        return "an empty file (0 bytes)"
    if isinstance(error, UnidentifiedImageError):
        if fmt:
            return f"a {fmt} file whose header is damaged or cut short ({size}); not decodable"
        return f"not a decodable image ({size}; not JPEG, PNG or another format PIL reads)"
    if isinstance(error, OSError) and "truncated" in text.lower():
        return f"truncated: the {fmt or 'image'} data ends before the image does ({size})"
    return f"{fmt + ' ' if fmt else ''}image data that does not decode ({size}): {type(error).__name__}: {text}"


def _decode_chunk(blobs: list[bytes], size) -> tuple[list[np.ndarray | None], list[tuple[int, str]]]:
    """Worker task: decoded arrays (None where it failed) and [(position in chunk, reason)]."""
    out, errors = [], []
    with _strict_truncation():
        for i, data in enumerate(blobs):
            try:
                out.append(decode_image(data, size))
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
                out.append(None)
                errors.append((i, decode_failure(e, data)))
    return out, errors


@dataclass
class Decoded:
    """Everything read from a source; `keep` marks the entries whose image decoded (all when not decoding)."""

    members: list[str] = field(default_factory=list)
    class_names: list = field(default_factory=list)  # class folder names, or int labels (labelled sources)
    domains: list[str | None] = field(default_factory=list)
    blobs: list[bytes] | None = None
    images: np.ndarray | None = None
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (member, reason)
    keep: np.ndarray | None = None


def _corrupt_error(member: str, reason: str) -> DataError:
    where, _, name = member.rpartition("::")
    what = f"'{name}' in {where}" if where else f"'{member}'"
    return DataError(f"corrupt image {what}: {reason}; --skip-corrupt skips it (skip_corrupt=True in load_dataset)")


def _mixed_sizes_error(member: str, shape: tuple, first: tuple) -> DataError:
    """Sizes as PIL and file browsers give them (width x height), the fix as the user types it."""
    return DataError(f"image '{member}' is {shape[1]}x{shape[0]} (width x height) but earlier images are "
                     f"{first[1]}x{first[0]}; --data.image_size N resizes every image to NxN "
                     f"(image_size=N in load_dataset)")


def read_entries(entries: Iterator, *, decode: bool, size=None, skip_corrupt: bool = False,
                 progress: bool = False, total: int | None = None, desc: str = "decode",
                 workers: int | None = None) -> Decoded:
    """Consume (member, class, domain, bytes) entries; decode them when `decode`, else keep the bytes."""
    out = Decoded(blobs=None if decode else [])
    entries = iter(entries)

    def take(n):
        chunk = list(islice(entries, n))
        for member, cls, dom, data in chunk:
            out.members.append(member)
            out.class_names.append(cls)
            out.domains.append(dom)
        return [e[3] for e in chunk]

    if not decode:
        while blobs := take(CHUNK):
            out.blobs.extend(blobs)
        return out

    from tqdm import tqdm  # imported here: only decoding shows a bar

    shape = None
    kept: list[np.ndarray] = []
    keep: list[bool] = []
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False, dynamic_ncols=True)

    def collect(start: int, result):
        nonlocal shape
        arrays, errors = result
        bad = dict(errors)
        for i, x in enumerate(arrays):
            member = out.members[start + i]
            if i in bad:
                if not skip_corrupt:
                    raise _corrupt_error(member, bad[i])
                out.corrupt.append((member, bad[i]))
                keep.append(False)
                continue
            if shape is None:
                shape = x.shape
            elif x.shape != shape:
                raise _mixed_sizes_error(member, x.shape, shape)
            keep.append(True)
        good = [x for x in arrays if x is not None]
        if good:
            kept.append(np.stack(good))
        bar.update(len(arrays))

    try:
        first = take(INLINE_MAX + 1)
        workers = workers or decode_workers()
        if len(first) <= INLINE_MAX or workers == 1:
            collect(0, _decode_chunk(first, size))
            while blobs := take(CHUNK):
                collect(len(out.members) - len(blobs), _decode_chunk(blobs, size))
        else:
            _decode_in_pool(first, take, collect, size, workers)
    finally:
        bar.close()
    out.keep = np.asarray(keep, dtype=bool)
    out.images = np.concatenate(kept) if kept else None
    return out


def decode_workers() -> int:
    """Decode processes: one per core the load average at start leaves free, at most 8; 1 means decoding in this
    process. CIFAR-10 train on 2 shared cores (load 3-4 from other jobs): inline 6.8 s, 1 worker 10.7-11.3 s, 2
    workers 8.2-9.5 s; on an idle machine 2 workers took 4.6 s. (Processes, not OpenMP threads: the passive wait
    policy that lets a run's torch take every core does not help them.)"""
    from fastpnr.system.cpu_threads import machine_at_start, threads_for

    return min(8, threads_for(*machine_at_start()))


def _decode_in_pool(first: list[bytes], take, collect, size, workers: int) -> None:
    """Main process reads ahead and submits chunks; results are collected in order (bounded queue)."""
    # fork: no re-import of the caller's __main__, workers start in milliseconds; they only run PIL and numpy.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pending: deque = deque()
    with ctx.Pool(workers) as pool:  # leaving the block terminates the workers, also on errors
        start = 0
        chunks = iter([first[i:i + CHUNK] for i in range(0, len(first), CHUNK)])
        while True:
            blobs = next(chunks, None) or take(CHUNK)
            if not blobs:
                break
            pending.append((start, pool.apply_async(_decode_chunk, (blobs, size))))
            start += len(blobs)
            while len(pending) > MAX_IN_FLIGHT:
                s, r = pending.popleft()
                collect(s, r.get())
        while pending:
            s, r = pending.popleft()
            collect(s, r.get())
