"""`ImageDataset` and `load_dataset`: read a split once, decode it once, cache the decoded arrays on disk."""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from fastpnr.data import cache
from fastpnr.data.decode import (RESIZE_MODES, Decoded, Resize, _corrupt_error, decode_image, read_entries,
                                 resize_array)
from fastpnr.data.registry import get_spec
from fastpnr.data.skipped import Skipped
from fastpnr.data.sources import Source, find_source, no_images_error
from fastpnr.errors import DataError, require


@dataclass(eq=False)
class ImageDataset:
    """One split of a dataset, indexable by position (the archive member order).

    images: uint8 (N, H, W, 3) when decoded, else None (then `image(i)` decodes the kept bytes).
    labels: int64 (N,) into `classes`; domain_ids: int64 (N,) into `domains`, or None.
    members: "archive::member" (or file path) per image, for messages.
    corrupt: (member, reason) per image skipped with skip_corrupt=True; skipped: what the listing passed over
    (empty class folders, files that are not images, 0-byte files).
    """

    name: str
    split: str
    classes: list[str]
    labels: np.ndarray
    members: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    images: np.ndarray | None = None
    domains: list[str] | None = None
    domain_ids: np.ndarray | None = None
    num_corrupt: int = 0
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    skipped: Skipped = field(default_factory=Skipped)
    image_size: Resize | None = None
    from_cache: bool = False
    _encoded: list[bytes] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def corrupt_images(self) -> list[str]:
        """The "archive::member" names of the images skipped as corrupt."""
        return [m for m, _ in self.corrupt]

    def image(self, i: int) -> np.ndarray:
        """uint8 (H, W, 3) of image i."""
        if self.images is not None:
            return np.asarray(self.images[i])
        try:
            return decode_image(self._encoded[i], self.image_size)
        except Exception as e:
            raise _corrupt_error(self.members[i], f"{type(e).__name__}: {e}") from None

    def encoded(self, i: int) -> bytes | None:
        """The original encoded bytes of image i when kept (decode=False), else None."""
        return None if self._encoded is None else self._encoded[i]

    def __repr__(self) -> str:
        shape = None if self.images is None else tuple(self.images.shape)
        return (f"ImageDataset({self.name}/{self.split}: {len(self)} images, {len(self.classes)} classes, "
                f"images={shape}, domains={self.domains}, num_corrupt={self.num_corrupt})")


def _size(image_size, resize: str = "stretch") -> Resize | None:
    require(resize in RESIZE_MODES, "resize", resize, RESIZE_MODES)
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    ok = (isinstance(image_size, (tuple, list)) and len(image_size) == 2
          and all(isinstance(s, int) and s > 0 for s in image_size))
    require(ok, "image_size", image_size, "None, a positive int or (height, width)")
    return Resize(*image_size, mode=resize)


def _labels(source: Source, read: Decoded, name: str, num_classes: int | None) -> tuple[list[str], np.ndarray]:
    """Class names and int64 labels; `num_classes` None skips the count check (a `limit`ed prefix)."""
    if source.labelled:  # file lists (DomainNet): the entries carry the labels, checked against `classes` by the source
        return source.classes, np.asarray(read.class_names, np.int64)
    classes = source.classes or sorted(set(read.class_names))
    index = {c: i for i, c in enumerate(classes)}
    unknown = next((m for m, c in zip(read.members, read.class_names) if c not in index), None)
    if unknown is not None:
        raise DataError(f"class folder of '{unknown}' is not one of the {len(classes)} classes in {name}'s "
                        f"classes.tsv")
    if num_classes is not None and len(classes) != num_classes:
        raise DataError(f"{name} in {source.location} has {len(classes)} class folders, expected {num_classes}")
    return classes, np.fromiter((index[c] for c in read.class_names), np.int64, len(read.class_names))


def load_dataset(name: str, split: str, data_dir=None, *, image_size=None, resize: str = "stretch",
                 skip_corrupt: bool = False, cache_dir=None, decode: bool = True, progress: bool = False,
                 download: bool = False, limit: int | None = None) -> ImageDataset:
    """Load one split of a registered dataset (see `DATASETS`).

    data_dir: the data root holding `<name>/` (or the dataset folder itself); default `resolve_data_root()`.
    image_size: resize every image (PIL bicubic) to this int or (H, W); default the native size.
    resize: how ("stretch": the whole image; "center": shorter side to image_size * 256/224, then the centre crop,
      the anchors' ImageNet/DomainNet evaluation transform). Part of the decode cache's key.
    decode: decode all images into `images` and cache them under `cache_dir` (default $FASTPNR_CACHE or
      ~/.cache/fastpnr) for datasets whose spec has cache_decoded; decode=False keeps the encoded bytes.
      The cache is keyed on the data's content (`cache.source_key`): a copy of the same archive elsewhere is a hit.
    skip_corrupt: skip images that fail to decode (named in `corrupt`) instead of raising DataError.
    download: fetch the official archive into the data root when missing (cifar10, cifar100).
    limit: read only the first `limit` images (archive / folder order), for smoke tests and benchmarks: nothing
      else is decoded and nothing is cached; `classes` are the prefix's unless classes.tsv or file lists give them.
    """
    spec = get_spec(name)
    split = spec.canonical_split(split)
    size = _size(image_size, resize)
    require(limit is None or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1),
            "limit", limit, "None or an int >= 1")
    source = find_source(spec, split, data_dir, download_missing=download)
    common = dict(name=name, split=split, mean=spec.mean, std=spec.std, image_size=size)

    folder = None
    if (decode or source.kind == "pickle") and spec.cache_decoded and limit is None:
        root = cache.cache_root(cache_dir)
        key = [cache.source_key(source.files, source.location, source.tree, root), source.classes]
        folder = cache.cache_folder(root, name, split, size, key)
        hit = cache.load(folder)
        if hit is not None:
            return _from_cache(hit, source, skip_corrupt, common)
    if source.kind == "pickle":
        ds = _read_pickles(source, size, limit, common)
    else:
        ds = _read_encoded(source, spec, split, size, decode, skip_corrupt, progress, limit, common)
    if folder is not None:
        meta = dict(format=cache.FORMAT_VERSION, dataset=name, split=split, image_size=cache.size_tag(size),
                    num_images=len(ds), location=str(source.location), classes=ds.classes, members=ds.members,
                    domains=ds.domains, corrupt=ds.corrupt, skipped=ds.skipped.to_json(cap=None),
                    sources=[str(f) for f in source.files[:50]])
        cache.save(folder, ds.images, ds.labels, ds.domain_ids, meta)
    return ds


def _from_cache(hit, source: Source, skip_corrupt: bool, common: dict) -> ImageDataset:
    """The cached split; member names moved to where the data is now (the cache is keyed on content, so the hit
    may come from a copy elsewhere)."""
    images, labels, domain_ids, meta = hit
    old, new = meta.get("location", ""), str(source.location)
    moved = bool(old) and old != new
    move = (lambda m: new + m[len(old):] if m.startswith(old) else m) if moved else (lambda m: m)  # noqa: E731
    corrupt = [(move(m), r) for m, r in meta["corrupt"]]
    if corrupt and not skip_corrupt:
        raise _corrupt_error(*corrupt[0])
    skipped = Skipped.from_json(meta.get("skipped"))
    members = [move(m) for m in meta["members"]] if moved else meta["members"]
    return ImageDataset(classes=meta["classes"], labels=labels, members=members, images=images,
                        domains=meta["domains"], domain_ids=domain_ids, num_corrupt=len(corrupt), corrupt=corrupt,
                        skipped=skipped.relocated(old, new) if moved else skipped, from_cache=True, **common)


def _read_pickles(source: Source, size, limit: int | None, common: dict) -> ImageDataset:
    images, labels, members, classes = source.arrays()
    if limit is not None:
        images, labels, members = images[:limit], labels[:limit], members[:limit]
    if size is not None:
        images = resize_array(images, size)
    return ImageDataset(classes=classes, labels=labels, members=members, images=images, **common)


def _read_encoded(source: Source, spec, split: str, size, decode: bool, skip_corrupt: bool, progress: bool,
                  limit: int | None, common: dict) -> ImageDataset:
    name = spec.name
    total = spec.num_images.get(split)  # progress-bar hint only
    entries = source.entries() if limit is None else islice(source.entries(), limit)
    read = read_entries(entries, decode=decode, size=size, skip_corrupt=skip_corrupt, progress=progress,
                        total=total if limit is None or total is None else min(total, limit),
                        desc=f"decode {name}/{split}")
    if not read.members or (decode and read.images is None):
        why = f" that decode ({len(read.corrupt)} corrupt)" if read.members else ""
        raise no_images_error(source, spec, split, why)
    classes, labels = _labels(source, read, name, spec.num_classes if limit is None else None)
    keep = read.keep if decode else np.ones(len(labels), bool)
    domain_ids = None
    if source.domains is not None:
        domain_ids = np.array([source.domains.index(d) for d in read.domains], np.int64)[keep]
    members = [m for m, k in zip(read.members, keep) if k]
    return ImageDataset(classes=classes, labels=labels[keep], members=members, images=read.images,
                        domains=list(source.domains) if source.domains else None, domain_ids=domain_ids,
                        num_corrupt=len(read.corrupt), corrupt=read.corrupt, skipped=source.skipped,
                        _encoded=read.blobs, **common)
