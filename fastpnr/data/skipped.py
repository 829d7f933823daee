"""What a source listing passed over and why: empty class folders, files that are not images, zero-byte images.

Nothing is dropped silently: the record travels with the dataset (``ImageDataset.skipped``), into the decode cache's
meta.json, the run's log and tasks.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
NAMES_CAP = 20  # names listed per kind in tasks.json and messages; the counts are always complete
WHY = {"empty_classes": ("empty class folder", "empty class folders"),  # (one, several) per kind
       "not_images": ("file that is not an image", "files that are not images"),
       "empty_files": ("empty (0-byte) image file", "empty (0-byte) image files"),
       "outside_classes": ("image outside a class folder", "images outside a class folder")}


def is_image_name(name: str) -> bool:
    """An image by its name: an image suffix, and not hidden (``.DS_Store``, macOS ``._x.jpg`` resource forks)."""
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)


@dataclass
class Skipped:
    """Names passed over while listing a split, per reason (class names for ``empty_classes``, file or
    ``archive::member`` names for the others)."""

    empty_classes: list[str] = field(default_factory=list)    # class folders without one readable image
    not_images: list[str] = field(default_factory=list)       # no image suffix, or hidden (.DS_Store, notes.txt)
    empty_files: list[str] = field(default_factory=list)      # image files of 0 bytes (an interrupted copy)
    outside_classes: list[str] = field(default_factory=list)  # images directly in the split folder

    def keep(self, name: str, size: int, in_class: bool = True) -> bool:
        """True when file `name` of `size` bytes is read as an image; otherwise record why not."""
        if not is_image_name(name):
            self.not_images.append(name)
        elif size == 0:
            self.empty_files.append(name)
        elif not in_class:
            self.outside_classes.append(name)
        else:
            return True
        return False

    def counts(self) -> dict[str, int]:
        return {f.name: len(getattr(self, f.name)) for f in fields(self)}

    def total(self) -> int:
        return sum(self.counts().values())

    def to_json(self, cap: int | None = NAMES_CAP) -> dict:
        """{kind: names (the first `cap`), ..., "counts": {kind: n}}."""
        out = {f.name: list(getattr(self, f.name))[:cap] for f in fields(self)}
        out["counts"] = self.counts()
        return out

    @classmethod
    def from_json(cls, d: dict | None) -> "Skipped":
        return cls(**{f.name: list((d or {}).get(f.name, [])) for f in fields(cls)})

    def relocated(self, old: str, new: str) -> "Skipped":
        """The same record with file names under `old` moved under `new` (a cache hit of a copied dataset)."""
        move = lambda names: [new + n[len(old):] if n.startswith(old) else n for n in names]  # noqa: E731
        return Skipped(list(self.empty_classes), move(self.not_images), move(self.empty_files),
                       move(self.outside_classes))

    def describe(self, cap: int = 5) -> str:
        """One line: "1 empty class folder (zebra), 2 files that are not images (.DS_Store, notes.txt), ..."."""
        parts = []
        for kind, n in self.counts().items():
            if n:
                names = [x.rsplit("::", 1)[-1].rsplit("/", 1)[-1] for x in getattr(self, kind)[:cap]]
                more = f", +{n - cap} more" if n > cap else ""
                parts.append(f"{n} {WHY[kind][n > 1]} ({', '.join(names)}{more})")
        return ", ".join(parts)

    def merged(self, *others: "Skipped") -> "Skipped":
        out = Skipped(**{f.name: list(getattr(self, f.name)) for f in fields(self)})
        for o in others:
            for f in fields(o):
                getattr(out, f.name).extend(getattr(o, f.name))
        return out
