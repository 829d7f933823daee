"""Checkpoints holding everything needed to resume exactly, written atomically (``atomic``)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .atomic import atomic_file
from fastpnr.errors import DataError


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def loop_state(cfg, where: dict, method, regularizer, optimizer, trainer, metrics: dict, global_step: int, writer,
               task_clock) -> dict:
    """The continual loop's checkpoint (format 2). ``where``: ``next_task``, ``next_epoch``, ``phase`` ("train": that
    epoch trains next, from its step ``next_step`` > 0 when a signal stopped it there; "evaluate": the task is trained
    and its evaluation comes next). The state is the same on every rank; the RNG states are this process's."""
    return {
        "format": 2, "config": cfg.to_dict(), **where,
        "method": method.state_dict(), "regularizer": regularizer.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": trainer.scaler.state_dict() if trainer is not None else None,
        "rng": rng_state(), "metrics": metrics, "global_step": global_step,
        "tensorboard_last_steps": dict(writer.last_steps) if writer is not None else None,
        "wandb_id": writer.wandb_id if writer is not None else None,  # train.wandb: a resume continues that run
        "launch_id": distributed.launch_id(),  # the torchrun invocation that wrote it (its elastic restarts resume)
        "task_clock": task_clock.state() if task_clock is not None else None,  # the task's time trained so far
    }


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``obj`` with torch.save, atomically, on the disk before the rename (``atomic.atomic_file``)."""
    with atomic_file(path, "wb", fsync=True) as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """A checkpoint (a run folder: its checkpoint.pt); a one-line DataError when it is missing or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.exists():
        raise DataError(f"no checkpoint at {path}; pass a run folder written by `fastpnr train --out` or a .pt file")
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as exc:  # truncated (an interrupted copy, a full disk) or not a checkpoint
        raise unreadable_checkpoint(path, exc) from None


def _task_number(p: Path) -> int:
    digits = p.stem[len("task"):]
    return int(digits) if digits.isdigit() else -1


def load_failure(exc: Exception) -> str:
    """torch.load's first sentence (its zip errors go on for five more), or the exception's type."""
    return str(exc).splitlines()[0].split(". ")[0].strip().rstrip(".")[:160] if str(exc).strip() else type(exc).__name__


def unreadable_checkpoint(path: Path, exc: Exception) -> DataError:
    """One line: the file, that it is truncated or corrupt, torch's first words, and which copies may serve."""
    size = path.stat().st_size if path.exists() else 0
    cause = load_failure(exc)
    tasks = sorted((p for p in path.parent.glob("task*.pt") if p != path and _task_number(p) >= 0),
                   key=_task_number, reverse=True)
    present = f" (here: {', '.join(p.name for p in tasks)})" if tasks else ""
    if path.name.startswith("task"):
        hint = (f"an earlier task{{t}}.pt{present} or the run's checkpoint.pt (the model at its last save) may serve "
                "for evaluation, or an earlier copy of this file")
    else:
        hint = (f"to evaluate, task{{t}}.pt, the model after task t, may serve{present}; to resume, restore an "
                "earlier copy of checkpoint.pt (--resume reads only it)")
    return DataError(f"checkpoint {path} is truncated or corrupt ({size} bytes; torch.load: {cause}); {hint}")
