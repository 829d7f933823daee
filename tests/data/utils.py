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


def write_two_class_folder(root: Path, per_split=(("train", 24), ("val", 8)), corrupt: str | None = None) -> Path:
    """A separable two-class image folder (dark "ants", bright "bees", 16x16 JPEGs) as root/<split>/<class>/NNN.jpg;
    `corrupt` names one file (e.g. "train/ants/003.jpg") written as a truncated JPEG."""
    rng = np.random.default_rng(0)
    for split, n in per_split:
        for c, cls in enumerate(("ants", "bees")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(np.clip(rng.normal(60 + 120 * c, 30, (16, 16, 3)), 0, 255).astype(np.uint8)).save(
                    buf, format="JPEG")
                data = buf.getvalue()
                if corrupt == f"{split}/{cls}/{i:03d}.jpg":
                    data = data[: len(data) // 3]
                (folder / f"{i:03d}.jpg").write_bytes(data)
    return root


def two_class_folder_overrides(tmp_path: Path, per_split=(("train", 24), ("val", 8)), corrupt: str | None = None,
                               **extra) -> dict:
    """`write_two_class_folder` under tmp_path/data, and the overrides of a tiny 2-task run on it (its own cache)."""
    write_two_class_folder(tmp_path / "data", per_split, corrupt)
    ov = {"dataset": "imagefolder", "data.data_dir": str(tmp_path / "data"), "data.num_tasks": 2,
          "data.train_fraction": 1.0, "data.test_fraction": 1.0, "eval.train_fraction": 1.0, "optim.batch_size": 8,
          "train.steps_per_epoch": 1, "train.progress": False, "eval.linear_epochs": 2, "eval.official_epochs": 1,
          "method.proj_hidden": 32, "method.proj_out": 16, "regularizer.distill_hidden": 16,
          "data.cache_dir": str(tmp_path / "cache"), "eval.forward_transfer": False}
    ov.update(extra)
    return ov


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


DOMAINNET_DOMAINS = ("real", "quickdraw", "painting", "sketch", "infograph", "clipart")
# Labels as the lists give them (not the sorted order of the names), so a test sees they come from the lists.
DOMAINNET_CLASSES = {"zigzag": 344, "aircraft_carrier": 0, "bee": 17}


def domainnet_files(domains=DOMAINNET_DOMAINS, per_class=(3, 1), size=(8, 8)) -> dict[str, dict[str, list]]:
    """{split: {domain: [(relative path, label, bytes), ...]}}; per_class = (train, test) images of each class."""
    out: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for k, d in enumerate(domains):
        for split, n in zip(("train", "test"), per_class):
            rows = []
            for c, (cls, label) in enumerate(DOMAINNET_CLASSES.items()):
                for i in range(n):
                    seed = 1000 * k + 100 * c + 10 * (split == "test") + i
                    rows.append((f"{d}/{cls}/{d}_{label:03d}_{split}{i:02d}.jpg", label, jpeg_bytes(seed, size)))
            out[split][d] = rows
    return out


def write_domainnet(root: Path, files=None, archives: dict[str, str] | None = None) -> dict:
    """The official layout under `root`: `<domain>_<split>.txt` lists and a `<domain>/` folder per domain, or for
    the domains in `archives` a `<domain>.<suffix>` archive ("zip", "tar", "tar.xz") with members `<domain>/...`."""
    import zipfile

    files = files or domainnet_files()
    archives = archives or {}
    root.mkdir(parents=True, exist_ok=True)
    for split, by_domain in files.items():
        for d, rows in by_domain.items():
            (root / f"{d}_{split}.txt").write_text("".join(f"{rel} {label}\n" for rel, label, _ in rows))
    for d in {d for by_domain in files.values() for d in by_domain}:
        images = {rel: data for by_domain in files.values() for rel, _, data in by_domain.get(d, [])}
        kind = archives.get(d)
        if kind is None:
            for rel, data in images.items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(data)
        elif kind == "zip":
            with zipfile.ZipFile(root / f"{d}.zip", "w") as zf:
                for rel in sorted(images):
                    zf.writestr(rel, images[rel])
        else:
            mode = {"tar": "w", "tar.xz": "w:xz", "tar.gz": "w:gz"}[kind]
            write_tar(root / f"{d}.{kind}", d, {rel.split("/", 1)[1]: data for rel, data in images.items()}, mode=mode)
    return files
