"""Folders made for a job that may fail: which ones a ``mkdir(parents=True)`` creates, and removing them again.

A download that fails (``data.sources.download``) and a run that stops before its first checkpoint
(``run_folder.NewRunFiles``) remove the folders they created, and only while those hold nothing else."""
from __future__ import annotations

from pathlib import Path


def missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, innermost first: what ``path.mkdir(parents=True)`` creates."""
    missing = []
    for p in (Path(path), *Path(path).parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) while they are empty; stop at the first that holds anything."""
    for p in folders:
        try:
            p.rmdir()
        except FileNotFoundError:  # never made (the job failed before its mkdir): its parent may still be
            continue
        except OSError:  # not empty: something else was put there, so it and its parents stay
            return
