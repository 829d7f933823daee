"""fastpnr cache: list the decode cache (decoded splits, .beton files) and evict entries.

    fastpnr cache                              # entries, most recently used first; total size and location
    fastpnr cache --max_size 5                 # remove the least recently used entries until 5 GB remain
    fastpnr cache --clear_older_than 30        # remove entries unused for more than 30 days
    fastpnr cache --clear                      # remove every entry
"""
from __future__ import annotations

import time

from fastpnr.cli import run_fire

GB = 1e9


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _ago(t: float, now: float) -> str:
    s = max(0.0, now - t)
    if s < 3600:
        return f"{s / 60:.0f} min ago"
    if s < 86400 * 2:
        return f"{s / 3600:.0f} h ago"
    return f"{s / 86400:.0f} days ago"


def table(found, now: float) -> list[str]:
    """One line per entry: dataset, split, image size, images, last used, bytes, folder or file name."""
    lines = [f"{'dataset':<16} {'split':<8} {'image size':<16} {'images':>8} {'last used':>13} {'bytes':>9}  entry"]
    for e in found:
        n = "-" if e.num_images is None else str(e.num_images)
        name = e.path.name + ("  (interrupted write)" if e.kind == "partial" else "")
        lines.append(f"{e.dataset:<16} {e.split or '-':<8} {e.image_size or '-':<16} {n:>8} "
                     f"{_ago(e.last_used, now):>13} {_human(e.bytes):>9}  {name}")
    return lines


def main(clear: bool = False, clear_older_than: float | None = None, max_size: float | None = None,
         dry_run: bool = False, cache_dir: str | None = None):
    """List the decode cache ($FASTPNR_CACHE, else ~/.cache/fastpnr; or --cache_dir) and evict entries.

    clear: remove every entry. clear_older_than: remove entries last used more than this many days ago.
    max_size: then remove the least recently used entries until the rest fits in this many GB.
    dry_run: print what would be removed, remove nothing. Only fastpnr's own entries are touched.
    """
    from fastpnr.data import cache
    from fastpnr.errors import require

    require(clear_older_than is None or (isinstance(clear_older_than, (int, float)) and clear_older_than >= 0),
            "--clear_older_than", clear_older_than, "a number of days >= 0")
    require(max_size is None or (isinstance(max_size, (int, float)) and max_size >= 0),
            "--max_size", max_size, "a size in GB >= 0")
    root = cache.cache_root(cache_dir)
    now = time.time()
    found = cache.entries(root)
    gone = cache.to_evict(found, clear=clear, older_than_days=clear_older_than,
                          max_bytes=None if max_size is None else max_size * GB, now=now)
    if gone:
        verb = "would remove" if dry_run else "removed"
        for e in gone:
            if not dry_run:
                cache.remove(e)
            print(f"{verb} {e.path} ({_human(e.bytes)}, last used {_ago(e.last_used, now)})")
        print(f"{verb} {len(gone)} entries, {_human(sum(e.bytes for e in gone))}\n")
        if not dry_run:
            found = [e for e in found if e not in gone]
    print(f"decode cache: {root}" + ("" if root.is_dir() else " (does not exist yet)"))
    if found:
        print("\n".join(table(found, now)))
    print(f"total: {len(found)} entries, {_human(sum(e.bytes for e in found))}")


def cli(argv=None):
    run_fire(main, argv, name="fastpnr cache")


if __name__ == "__main__":
    cli()
