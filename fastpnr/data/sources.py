"""Finding a dataset on disk and reading its raw records (encoded image bytes or CIFAR pickle arrays).

Layouts read here:
- split folders `<dir>/<split>/<class>/<file>` or archives `<dir>/<split>.tar[.xz|.gz]`, sharded as `<split>-<k>.tar.xz`
  (the archive members are `<split>/<class>/<file>`; the class is the parent folder);
- the official CIFAR python pickles (`cifar-10-batches-py/`, `cifar-100-python/` or their `.tar.gz`);
- PACS: one archive (or folder) per domain, `<domain>/<class>/<file>`, split by the rule in shared/data/README.md;
- DomainNet: the official file lists `<domain>_<split>.txt` (lines `<domain>/<class>/<file> <label>`) beside one
  folder (or `.zip` / tar archive) per domain holding `<domain>/<class>/<file>`.
"""
from __future__ import annotations

import lzma
import os
import pickle
import re
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from fastpnr.data.registry import DatasetSpec
from fastpnr.data.skipped import IMAGE_SUFFIXES, Skipped
from fastpnr.errors import DataError
from fastpnr.system.folders import missing_folders, remove_empty_folders

ARCHIVE_SUFFIXES = (".tar.xz", ".txz", ".tar", ".tar.gz", ".tgz", ".zip")
# Official CIFAR pickle folders and tarballs, by dataset name.
CIFAR_PICKLES = {"cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
                 "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz")}
DOWNLOAD_TIMEOUT_S = 20

# An entry is (member name for messages, class folder name, domain or None, encoded bytes); sources with
# `labelled=True` give the int label instead of the class folder name (file-list layouts: DomainNet).
Entry = tuple[str, "str | int", "str | None", bytes]


@dataclass
class Source:
    """Where one split of a dataset lives and how to read it.

    `entries` streams encoded images (kind "encoded"); `arrays` returns decoded CIFAR pickles (kind "pickle") as
    (images uint8 (N, 32, 32, 3), labels int64 (N,), members, classes).
    `labelled`: the entries carry int labels into `classes` (from file lists), not class folder names.
    `tree`: `files` are the images of a folder tree (the cache keys them by name, size and mtime), not archives.
    `skipped`: what the listing passed over (complete once `entries` has been consumed).
    """

    kind: str
    location: Path
    files: list[Path]
    classes: list[str] | None = None
    domains: tuple[str, ...] | None = None
    entries: Callable[[], Iterator[Entry]] | None = None
    arrays: Callable[[], tuple[np.ndarray, np.ndarray, list[str], list[str]]] | None = None
    labelled: bool = False
    tree: bool = False
    skipped: Skipped = field(default_factory=Skipped)


def candidate_roots(data_dir=None) -> list[Path]:
    """Data roots to search, in order: `data_dir`, else `$FASTPNR_DATA`, else `shared/data` beside the checkout."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    if os.environ.get("FASTPNR_DATA"):
        return [Path(os.environ["FASTPNR_DATA"]).expanduser()]
    repo_root = Path(__file__).resolve().parents[2]
    roots = [repo_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return list(dict.fromkeys(r.resolve() for r in roots))


def resolve_data_root(data_dir=None) -> Path:
    """The data root `load_dataset` uses: the first existing candidate root (else the first candidate)."""
    roots = candidate_roots(data_dir)
    return next((r for r in roots if r.is_dir()), roots[0])


def _archive(directory: Path, stem: str) -> Path | None:
    return next((directory / f"{stem}{s}" for s in ARCHIVE_SUFFIXES if (directory / f"{stem}{s}").is_file()), None)


def _split_archives(directory: Path, split: str) -> list[Path]:
    """`<split>.tar.xz`, or the shards `<split>-0.tar.xz`, `<split>-1.tar.xz`, ... in shard order."""
    single = _archive(directory, split)
    if single is not None:
        return [single]
    pattern = re.compile(rf"^{re.escape(split)}-(\d+)({'|'.join(re.escape(s) for s in ARCHIVE_SUFFIXES)})$")
    shards = [(int(m.group(1)), p) for p in directory.glob(f"{split}-*") if (m := pattern.match(p.name))]
    return [p for _, p in sorted(shards)]


SPLIT_LAYOUT = "<split>/<class>/<file> images"


def _unreadable(path: Path, e: Exception, expected: str) -> DataError:
    """One line for an archive that cannot be opened (tarfile's own message lists every method it tried)."""
    size = path.stat().st_size if path.is_file() else None
    if size == 0:
        why = "the file is empty (0 bytes)"
    elif "could not be opened successfully" in str(e):
        why = "not a tar archive (plain, gzip, bzip2 or xz)"
    else:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
    return DataError(f"cannot read archive {path}: {why}; expected a .tar, .tar.xz, .tar.gz or .zip archive of "
                     f"{expected}")


def _empty_leaf_dirs(dirs: set[str], image_dirs: set[str]) -> list[str]:
    """Names of the folders (archive paths) with no image at or below them and no sub-folder: empty classes."""
    full = {d for d in dirs if d}
    for d in list(full) + list(image_dirs):  # every ancestor is a folder too
        while "/" in d:
            d = d.rsplit("/", 1)[0]
            full.add(d)
    has_child = {d.rsplit("/", 1)[0] for d in full if "/" in d}
    occupied = set()
    for d in image_dirs:
        while d:
            occupied.add(d)
            d = d.rsplit("/", 1)[0] if "/" in d else ""
    return sorted({d.rsplit("/", 1)[-1] for d in full - has_child - occupied})


def _archive_members(path: Path) -> Iterator[tuple[str, bool, int, Callable[[], bytes]]]:
    """(name, is_dir, size, read) per member of a tar or zip archive, in archive order."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                yield info.filename.rstrip("/"), info.is_dir(), info.file_size, lambda i=info: zf.read(i)
        return
    with tarfile.open(path, "r:*") as tf:
        for m in tf:
            if m.isdir() or m.isfile():
                yield m.name, m.isdir(), m.size, lambda m=m: tf.extractfile(m).read()


def iter_archive(path: Path, skipped: Skipped | None = None,
                 expected: str = SPLIT_LAYOUT) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every image file in a tar or zip archive, in archive order; the rest goes into
    `skipped` (not images, empty files, and at the end the class folders left without an image)."""
    skipped = skipped if skipped is not None else Skipped()
    dirs, image_dirs = set(), set()
    try:
        for name, is_dir, size, read in _archive_members(path):
            name = name[2:] if name.startswith("./") else name
            parent = name.rsplit("/", 1)[0] if "/" in name else ""
            if is_dir:
                dirs.add(name.rstrip("/"))
            elif skipped.keep(f"{path}::{name}", size):
                image_dirs.add(parent)
                yield name, read()
            else:
                dirs.add(parent)
    except (tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, zlib.error, EOFError, OSError) as e:
        raise _unreadable(path, e, expected) from None
    skipped.empty_classes.extend(_empty_leaf_dirs(dirs, image_dirs))


def _list_folder(folder: Path, skipped: Skipped | None = None) -> list[Path]:
    """Image files at `<folder>/<class>/<file>`, classes and files sorted by name; the rest goes into `skipped`."""
    skipped = skipped if skipped is not None else Skipped()
    files = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir():
            skipped.keep(str(entry), entry.stat().st_size, in_class=False)
            continue
        images = [f for f in sorted(entry.iterdir()) if f.is_file() and skipped.keep(str(f), f.stat().st_size)]
        if not images:
            skipped.empty_classes.append(entry.name)
        files.extend(images)
    return files


def _class_of(member: str, where: Path) -> str:
    parts = member.split("/")
    if len(parts) < 2:
        raise DataError(f"image '{member}' in {where} has no class folder; expected <split>/<class>/<file>")
    return parts[-2]


def _split_source(directory: Path, split: str, classes: list[str] | None) -> Source | None:
    folder = directory / split
    if folder.is_dir():
        skipped = Skipped()
        files = _list_folder(folder, skipped)

        def entries():
            for f in files:
                yield str(f), f.parent.name, None, f.read_bytes()
        return Source("encoded", folder, files, classes, entries=entries, tree=True, skipped=skipped)
    archives = _split_archives(directory, split)
    if not archives:
        return None
    skipped = Skipped()

    def entries():
        for a in archives:
            for name, data in iter_archive(a, skipped):
                yield f"{a}::{name}", _class_of(name, a), None, data
    return Source("encoded", archives[0] if len(archives) == 1 else directory, archives, classes, entries=entries,
                  skipped=skipped)


def _read_classes_tsv(path: Path) -> list[str]:
    """classes.tsv rows are `index<TAB>wnid<TAB>words`; returns the wnids in index order."""
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if line.strip()]
    try:
        by_index = {int(r[0]): r[1] for r in rows}
    except (ValueError, IndexError):
        raise DataError(f"cannot parse {path}: expected lines 'index<TAB>class<TAB>description'") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(f"{path} indices are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def _pacs_source(directory: Path, split: str, domains: tuple[str, ...]) -> Source | None:
    """Domain archives/folders; test = position % 5 == 4 of the sorted names within each domain/class."""
    found = {d: (directory / d if (directory / d).is_dir() else _archive(directory, d)) for d in domains}
    if all(p is None for p in found.values()):
        return None
    missing = [d for d, p in found.items() if p is None]
    if missing:
        raise DataError(f"PACS domain {missing[0]!r} is missing: no {directory / missing[0]}.tar.xz or folder; "
                        f"all of {', '.join(domains)} are needed")

    skipped = Skipped()

    def domain_items(d: str, path: Path) -> list[tuple[str, str, bytes]]:
        if path.is_dir():
            return [(str(f), f.parent.name, f.read_bytes()) for f in _list_folder(path, skipped)]
        return [(f"{path}::{n}", _class_of(n, path), b)
                for n, b in iter_archive(path, skipped, "<domain>/<class>/<file> images")]

    def entries():
        for d in domains:
            items = domain_items(d, found[d])
            by_class: dict[str, list[str]] = {}
            for member, cls, _ in items:
                by_class.setdefault(cls, []).append(member)
            test = {m for names in by_class.values() for pos, m in enumerate(sorted(names)) if pos % 5 == 4}
            for member, cls, data in items:
                if (member in test) == (split == "test"):
                    yield member, cls, d, data
    return Source("encoded", directory, [found[d] for d in domains], None, domains, entries=entries, skipped=skipped)


def _domain_location(directory: Path, domain: str) -> Path | None:
    """A domain's images: the folder `<domain>/`, else `<domain>.zip`, else `<domain>.tar[.xz|.gz]`."""
    if (directory / domain).is_dir():
        return directory / domain
    if (directory / f"{domain}.zip").is_file():
        return directory / f"{domain}.zip"
    return _archive(directory, domain)


def _read_file_list(path: Path, domain: str, domains: tuple[str, ...], num_classes: int) -> list[tuple[str, int, int]]:
    """(image path relative to the root, label, line number) per line of `<domain>_<split>.txt`, in file order.

    Lines are `<domain>/<class>/<file> <label>`; a line that does not parse, a label outside [0, num_classes), an
    unknown domain, or another domain's image is a DataError naming the file and line.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the DomainNet file list {path}: {e}") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        try:
            rel, label = parts[0], int(parts[1])
        except (IndexError, ValueError):
            rel, label = "", None
        if label is None or len(rel.split("/")) < 3:
            raise DataError(f"{path}:{n}: cannot parse {line.strip()!r}; expected '<domain>/<class>/<file> <label>'")
        found = rel.split("/", 1)[0]
        if found not in domains:
            raise DataError(f"{path}:{n}: unknown domain {found!r} in {rel!r}; DomainNet domains: {', '.join(domains)}")
        if found != domain:
            raise DataError(f"{path}:{n}: {rel!r} is a {found!r} image but {path.name} lists {domain!r} images")
        if not 0 <= label < num_classes:
            raise DataError(f"{path}:{n}: label {label} of {rel!r} is outside [0, {num_classes})")
        rows.append((rel, label, n))
    return rows


def _listed_images(location: Path, rows: list[tuple[str, int, int]], list_path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of every listed image, in list order, from a domain folder, zip or tar archive.

    Zip members are read by name; a tar is streamed once and the images that come before their turn in the list are
    held in memory (none when the archive and the list share an order).
    """
    def missing(rel: str, n: int, where: Path) -> DataError:
        return DataError(f"{list_path}:{n}: listed image {rel!r} does not exist in {where}")

    if location.is_dir():
        for rel, _, n in rows:
            f = location.parent / rel
            try:
                data = f.read_bytes()
            except FileNotFoundError:
                raise missing(rel, n, location.parent) from None
            except OSError as e:
                raise DataError(f"{list_path}:{n}: cannot read {f}: {e}") from None
            yield str(f), data
        return
    if location.suffix == ".zip":
        try:
            with zipfile.ZipFile(location) as zf:
                for rel, _, n in rows:
                    try:
                        data = zf.read(rel)
                    except KeyError:
                        raise missing(rel, n, location) from None
                    yield f"{location}::{rel}", data
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            raise DataError(f"cannot read archive {location}: {e}; expected a zip archive") from None
        return
    order = [rel for rel, _, _ in rows]
    left = Counter(order)
    pending: dict[str, bytes] = {}
    i = 0
    for name, data in iter_archive(location, expected="<domain>/<class>/<file> images"):
        if name in left:
            pending[name] = data
        while i < len(order) and order[i] in pending:
            rel = order[i]
            yield f"{location}::{rel}", pending[rel]
            left[rel] -= 1
            if not left[rel]:
                del pending[rel]
            i += 1
    if i < len(order):
        raise missing(order[i], rows[i][2], location)


def _domainnet_source(directory: Path, split: str, domains: tuple[str, ...], num_classes: int) -> Source | None:
    """The official DomainNet layout: `<domain>_<split>.txt` lists beside `<domain>/` folders (or archives).

    Labels come from the lists; the domain of an image is its path's first component. The domains whose list
    exists are read, in the anchors' order (`domains`); a domain with a list but no images is a DataError.
    `classes[label]` is the class folder the lists give for that label (`label_<k>` for a label no line uses).
    """
    lists = {d: directory / f"{d}_{split}.txt" for d in domains}
    present = tuple(d for d in domains if lists[d].is_file())
    if not present:
        if any(_domain_location(directory, d) or list(directory.glob(f"{d}_*.txt")) for d in domains):
            raise DataError(f"DomainNet in {directory} has no {split} file lists: none of "
                            f"{', '.join(p.name for p in lists.values())} exist (the official <domain>_{split}.txt)")
        return None
    locations = {d: _domain_location(directory, d) for d in present}
    no_images = [d for d in present if locations[d] is None]
    if no_images:
        d = no_images[0]
        raise DataError(f"{lists[d]} lists {d!r} images but there is no {directory / d}/ folder, {d}.zip or "
                        f"{d}.tar[.xz|.gz] archive in {directory}")
    rows = {d: _read_file_list(lists[d], d, domains, num_classes) for d in present}
    names: dict[int, str] = {}
    for d in present:
        for rel, label, _ in rows[d]:
            names.setdefault(label, rel.split("/")[1])
    classes = [names.get(k, f"label_{k}") for k in range(num_classes)]

    def entries():
        for d in present:
            images = _listed_images(locations[d], rows[d], lists[d])
            for (_, label, _), (member, data) in zip(rows[d], images):
                yield member, label, d, data
    files = [lists[d] for d in present] + [locations[d] for d in present]
    return Source("encoded", directory, files, classes, present, entries=entries, labelled=True)


def _pickle_source(spec: DatasetSpec, directory: Path, split: str) -> Source | None:
    folder_name, tarball_name = CIFAR_PICKLES[spec.name]
    folder = directory if directory.name == folder_name else directory / folder_name
    tarball = directory / tarball_name
    if spec.name == "cifar10":
        train_re, test_name, meta_name, label_key, names_key = r"data_batch_\d+", "test_batch", "batches.meta", b"labels", b"label_names"
    else:
        train_re, test_name, meta_name, label_key, names_key = r"train", "test", "meta", b"fine_labels", b"fine_label_names"
    wanted = re.compile(train_re if split == "train" else re.escape(test_name))

    def parse(blobs: dict[str, bytes], where: Path):
        names = sorted((n for n in blobs if wanted.fullmatch(n)), key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])
        if not names or meta_name not in blobs:
            raise DataError(f"CIFAR pickles in {where} lack {'the ' + split + ' batches' if not names else meta_name}")
        try:
            meta = pickle.loads(blobs[meta_name], encoding="bytes")
            batches = [pickle.loads(blobs[n], encoding="bytes") for n in names]
            images = np.concatenate([np.asarray(b[b"data"], np.uint8).reshape(-1, 3, 32, 32) for b in batches])
            labels = np.concatenate([np.asarray(b[label_key], np.int64) for b in batches])
            classes = [c.decode() for c in meta[names_key]]
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise DataError(f"cannot read CIFAR pickles in {where}: {type(e).__name__}: {e}") from None
        members = [f"{where}::{n}[{i}]" for n, b in zip(names, batches) for i in range(len(b[label_key]))]
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels, members, classes

    if folder.is_dir():
        files = [f for f in sorted(folder.iterdir()) if f.is_file()]
        return Source("pickle", folder, files,
                      arrays=lambda: parse({f.name: f.read_bytes() for f in files}, folder))
    if tarball.is_file():
        def arrays():
            blobs = {}
            try:
                with tarfile.open(tarball, "r:*") as tf:
                    for m in tf:
                        if m.isfile():
                            blobs[m.name.rsplit("/", 1)[-1]] = tf.extractfile(m).read()
            except (tarfile.TarError, zlib.error, lzma.LZMAError, EOFError) as e:
                raise DataError(f"cannot read archive {tarball}: {e}; expected the official {tarball_name}") from None
            return parse(blobs, tarball)
        return Source("pickle", tarball, [tarball], arrays=arrays)
    return None


def _source_in(spec: DatasetSpec, directory: Path, split: str) -> Source | None:
    if not directory.is_dir():
        return None
    if spec.layout == "pacs":
        return _pacs_source(directory, split, spec.domains)
    if spec.layout == "domainnet":
        return _domainnet_source(directory, split, spec.domains, spec.num_classes)
    tsv = directory / "classes.tsv"
    source = _split_source(directory, split, _read_classes_tsv(tsv) if tsv.is_file() else None)
    if source is None and spec.layout == "cifar":
        source = _pickle_source(spec, directory, split)
    return source


def download(url: str, dest_dir: Path) -> Path:
    """Download `url` into `dest_dir` (tmp file, then os.replace); DataError with the URL when it fails, leaving
    nothing behind: neither the partial file nor the folders the download created."""
    dest = dest_dir / url.rsplit("/", 1)[-1]
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    created = missing_folders(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
        os.replace(tmp, dest)
    except BaseException as e:  # also Ctrl-C during the download
        tmp.unlink(missing_ok=True)
        remove_empty_folders(created)
        if not isinstance(e, (OSError, urllib.error.URLError)):  # URLError, timeouts, a read-only dir: OSErrors
            raise
        raise DataError(f"could not download {url} into {dest_dir}: {e}; download it by hand into that folder, "
                        f"or pass --data-dir / set $FASTPNR_DATA to where the data is") from None
    return dest


def no_images_error(source: Source, spec: DatasetSpec, split: str, why: str = "") -> DataError:
    """"split ... holds no images", with what the listing skipped and the layout it reads."""
    skipped = f" (skipped: {source.skipped.describe()})" if source.skipped.total() else ""
    layout = {"pacs": "<domain>/<class>/<file> images", "domainnet": "the images its file lists name"}.get(
        spec.layout, SPLIT_LAYOUT.replace("<split>", split))
    return DataError(f"split {split!r} of {spec.name} in {source.location} holds no images{why}{skipped}; expected "
                     f"{layout} ({', '.join(IMAGE_SUFFIXES)})")


def find_source(spec: DatasetSpec, split: str, data_dir=None, *, download_missing: bool = False) -> Source:
    """The `Source` of `spec`'s `split` under the data root(s); DataError listing the places looked."""
    roots = candidate_roots(data_dir)
    # A root holds the dataset at <root>/<name>/ (imagefolder too: <root>/imagefolder/); data_dir may also point at
    # the dataset folder itself.
    dirs = list(dict.fromkeys(d for r in roots for d in (r / spec.name, r)))
    for d in dirs:
        source = _source_in(spec, d, split)
        if source is not None:
            if not source.files:
                raise no_images_error(source, spec, split)
            return source
    looked = ", ".join(map(str, dirs))
    if download_missing and spec.download_url:
        target = resolve_data_root(data_dir) / spec.name
        try:
            download(spec.download_url, target)
        except DataError as e:
            raise DataError(f"dataset {spec.name!r} split {split!r} not found (looked in: {looked}) and {e}") from None
        source = _source_in(spec, target, split)
        if source is not None:
            return source
    how = (f"download {spec.download_url} (download=True, --data.download true), or put" if spec.download_url
           else "put")
    layout = {"pacs": "<domain>.tar.xz per domain",
              "domainnet": f"<domain>_{split}.txt file lists beside <domain>/ folders (or <domain>.zip archives)"}.get(
        spec.layout, f"{split}/<class>/<file> or {split}.tar.xz")
    raise DataError(f"dataset {spec.name!r} split {split!r} not found; looked in: {looked}; "
                    f"{how} it there as {layout} (see shared/data/README.md), or pass --data-dir / set $FASTPNR_DATA")
