"""FFCV glue: the lazy import, the `.beton` schema fastpnr writes, writing and checking a `.beton`.

Nothing here imports ffcv at module import time: `import_ffcv()` does, and turns a missing install into one line.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastpnr.errors import DataError, FastPNRError, require

FFCV_MISSING = "ffcv is not installed; install the extra: pip install ffcv==1.0.2 (see README)"
IMAGE_FORMATS = {"raw": "raw", "jpeg": "jpg", "jpg": "jpg"}  # CLI name → FFCV RGBImageField write_mode
# field name → FFCV field class name; "domain" is written only for datasets with domains
SCHEMA = {"image": "RGBImageField", "label": "IntField", "index": "IntField"}
OPTIONAL = {"domain": "IntField"}


def import_ffcv():
    """The ffcv package, or FastPNRError(FFCV_MISSING) when it (or a library it needs) is not importable."""
    try:
        import ffcv  # noqa: F401
        import ffcv.fields  # noqa: F401  (loads numba and the compiled libffcv: the part that fails on a bad install)
        import ffcv.loader  # noqa: F401
        import ffcv.writer  # noqa: F401
    except ImportError as e:
        raise FastPNRError(f"{FFCV_MISSING} ({type(e).__name__}: {e})".replace("\n", " ")) from None
    return ffcv


class _Samples:
    """Indexable view of an ImageDataset as FFCV writer tuples (image HWC uint8, label, index[, domain])."""

    def __init__(self, source, with_domain: bool):
        self.source, self.with_domain = source, with_domain
        self.labels = np.asarray(source.labels, dtype=np.int64)
        self.domains = np.asarray(source.domain_ids, dtype=np.int64) if with_domain else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = np.ascontiguousarray(self.source.image(int(i)), dtype=np.uint8)
        out = (img, int(self.labels[i]), int(i))
        return out + (int(self.domains[i]),) if self.with_domain else out


def write_beton(source, path, image_format: str = "raw", jpeg_quality: int = 90, max_resolution: int | None = None,
                num_workers: int = 2, page_size: int | None = None) -> Path:
    """Write `source` (an ImageDataset or anything with `labels`, `image(i)`, `__len__`) to the FFCV file `path`.

    Fields: image (RGBImageField, raw uint8 or JPEG at `jpeg_quality`, longest side capped at `max_resolution`),
    label (IntField), index (IntField: the position in `source`, which is what loader subsets refer to) and, when
    `source.domain_ids` is not None, domain (IntField). Written to a temporary file beside `path` and renamed into
    place, so a crash never leaves a truncated `.beton` under the final name. Shows FFCV's progress bar.
    """
    import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    require(image_format in IMAGE_FORMATS, "image_format", image_format, ("raw", "jpeg"))
    require(isinstance(jpeg_quality, int) and 1 <= jpeg_quality <= 100, "jpeg_quality", jpeg_quality, "an int in [1, 100]")
    require(max_resolution is None or (isinstance(max_resolution, int) and max_resolution > 0), "max_resolution",
            max_resolution, "None or an int > 0")
    require(isinstance(num_workers, int) and num_workers >= 1, "num_workers", num_workers, "an int >= 1")
    require(len(source) > 0, "source", f"{getattr(source, 'name', source)!r} (empty)", "a dataset with >= 1 image")
    path = Path(path)
    require(path.suffix == ".beton", "out", str(path), "a file name ending in .beton")
    with_domain = getattr(source, "domain_ids", None) is not None
    fields = {"image": RGBImageField(write_mode=IMAGE_FORMATS[image_format], max_resolution=max_resolution,
                                     jpeg_quality=jpeg_quality),
              "label": IntField(), "index": IntField()}
    if with_domain:
        fields["domain"] = IntField()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    kw = {} if page_size is None else {"page_size": page_size}
    try:
        # FFCV's workers are forked processes that index `_Samples`; nothing is pickled
        DatasetWriter(str(tmp), fields, num_workers=num_workers, **kw).from_indexed_dataset(_Samples(source, with_domain))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_schema(path):
    """(ffcv Reader, {field name: FFCV field class name}) of a `.beton`; DataError when it is not one."""
    import_ffcv()
    from ffcv.reader import Reader

    p = Path(path)
    if p.is_dir():
        raise DataError(f"FFCV file {str(p)!r} is a directory, not a .beton file")
    if not p.is_file():
        raise DataError(f"FFCV file {str(p)!r} does not exist (write one with: fastpnr to_beton --dataset NAME "
                        f"--split SPLIT --out FILE.beton)")
    try:
        reader = Reader(str(p))
    except Exception as e:  # a truncated file, another format, another FFCV file version, no read permission
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(f"{str(p)!r} is not a readable FFCV .beton (truncated, unreadable or not written by FFCV: "
                        f"{msg}); rewrite it with fastpnr to_beton") from None
    return reader, {name: type(h).__name__ for name, h in reader.handlers.items()}


def check_schema(path):
    """read_schema(path), raising DataError unless it has fastpnr's fields (image, label, index[, domain])."""
    reader, fields = read_schema(path)
    n = int(reader.num_samples)
    want = {**SCHEMA, **{k: v for k, v in OPTIONAL.items() if k in fields}}
    if fields != want:
        got = ", ".join(f"{k}:{v}" for k, v in fields.items())
        need = ", ".join(f"{k}:{v}" for k, v in SCHEMA.items())
        raise DataError(f"{str(path)!r} has fields ({got}); fastpnr needs ({need}[, domain:IntField]) — rewrite it "
                        f"with fastpnr to_beton")
    if n == 0:
        raise DataError(f"{str(path)!r} holds 0 samples")
    return reader, fields
