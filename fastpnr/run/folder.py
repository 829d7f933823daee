"""The run folder's rules: one run per folder, what a resume may change, TensorBoard scalars that a resume does not
repeat.

- A new run refuses a folder that already holds a run (``check_new_run_folder``); ``--overwrite`` first deletes the
  files fastpnr writes there (``clear_run_files``), never anything else. A new run that stops before its first
  checkpoint removes what it created (``NewRunFiles``), and only that.
- ``--resume`` takes a run folder or its ``checkpoint.pt`` (``resume_folder``); a configuration that differs from the
  checkpoint's in a setting that can change the numbers stops the resume (``config_changes``) unless allowed.
- ``ScalarLog`` writes the TensorBoard scalars and remembers the last step written per tag; that goes into every
  checkpoint, and a resume first drops from the event files what was written after the checkpoint
  (``prune_events``), so that each (tag, step) appears once. With ``train.wandb`` it fans every scalar out to
  Weights & Biases too (``wandb_log.WandbLog``), whose run id also goes into every checkpoint (``open_run_log``).

A run folder (``--out``; ``RUN_FILES``):
    config.json            the resolved configuration
    tasks.json             task -> classes / domains / number of images; split seeds; skipped and corrupt files
    tasks_indices.npz      task{t}: train indices trained on; test, test_task{t}, eval_train: the evaluation subsets
    checkpoint.pt          everything needed to resume (written atomically at the start, after every epoch, when a
                           task's training ends (before its evaluation) and after its evaluation)
    task{t}.pt             the model after task t (for ``fastpnr linear`` / ``fastpnr knn``)
    metrics.json           accuracy_matrix (T x T, percent), per-protocol matrices, average accuracy, forgetting, ...
    accuracy_matrix.csv    and accuracy_matrix.png (heatmap)
    tb/                    TensorBoard scalars
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from fastpnr.errors import ConfigError, DataError
from fastpnr.system.atomic import atomic_file, temporary_target
from fastpnr.system.folders import missing_folders, remove_empty_folders

CHECKPOINT = "checkpoint.pt"
TENSORBOARD = "tb"
# Everything fastpnr writes into a run folder (the module docstring lists what each holds).
WANDB = "wandb"  # wandb_log.WANDB_FOLDER: the run's wandb files (train.wandb), unless WANDB_DIR is set
# tasks_indices.npz: data.task_data.TASK_INDICES, written by TaskData (named here without importing the data room,
# which loads torch: `fastpnr train` checks --out before torch loads)
RUN_FILES = ("config.json", "tasks.json", "tasks_indices.npz", CHECKPOINT, "metrics.json", "accuracy_matrix.csv",
             "accuracy_matrix.png", TENSORBOARD, WANDB)
TASK_MODEL = re.compile(r"task\d+\.pt")
# A folder holding one of these holds a run.
RUN_MARKERS = ("config.json", CHECKPOINT, "metrics.json", TENSORBOARD)
# Settings a resume may change: they cannot change the numbers (display, host-read cadence, where data is found,
# how many tasks this session runs).
RESUME_SAFE = ("train.progress", "train.log_every", "train.precision_reason", "train.max_tasks", "data.data_dir", "data.cache_dir", "out",
               "train.wandb", "train.wandb_entity", "train.wandb_group", "train.wandb_name", "train.wandb_mode")


# ------------------------------------------------------------------------------------------------ new runs
def run_files(out: Path) -> list[Path]:
    """The files and folders fastpnr wrote in ``out``."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if _run_file(p.name) or _run_file(temporary_target(p.name) or ""))


def _run_file(name: str) -> bool:
    """A name fastpnr writes into a run folder (a temporary one, left by an atomic write cut short, names its target)."""
    return name in RUN_FILES or bool(TASK_MODEL.fullmatch(name))


def holds_run(out: Path) -> list[str]:
    """Names of the run files in ``out`` that mark it as holding a run (empty: free for a new run)."""
    return [p.name for p in run_files(out) if p.name in RUN_MARKERS or TASK_MODEL.fullmatch(p.name)]


def check_writable_folder(out: str | os.PathLike, flag: str = "--out") -> None:
    """``out`` is a folder the run can write, or one it can create: else one line naming it and what is wrong (before
    anything is read or written: a folder that fails only when tasks.json is written has cost the data's load)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {out}: is a file, not a folder; allowed: a new folder or a run folder")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())  # the folder itself, or its first parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {out}: cannot be created, {existing} is a file; allowed: a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system or no write permission"
        what = "is not writable" if existing == out else f"cannot be created: {existing} is not writable"
        raise ConfigError(f"{flag} {out}: {what} ({why}); allowed: a folder this user can write")


def check_new_run_folder(out: Path, overwrite: bool) -> None:
    """Refuse ``out`` if it holds a run, unless ``overwrite``: then delete that run's files (and only those)."""
    found = holds_run(out)
    if not found:
        return
    if not overwrite:
        raise ConfigError(f"--out {out} already holds a run ({', '.join(found[:4])}); continue it with --resume {out}, "
                          "pick a new folder, or pass --overwrite to delete that run's files first")
    clear_run_files(out)


def clear_run_files(out: Path, keep: frozenset[str] = frozenset()) -> None:
    """Delete the run files in ``out`` (``run_files``), except those named in ``keep``."""
    for p in run_files(out):
        if p.name in keep:
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


class NewRunFiles:
    """What a new run creates in its folder, to remove again if it stops before its first checkpoint (a missing
    data dir, a corrupt image, a batch larger than a task, Ctrl-C while the data loads): such a folder holds nothing
    resumable, and an empty or half-written ``--out`` left behind would only refuse or confuse the next run.

    Made before the folder is touched (after ``check_new_run_folder``): it notes the run files already there and
    the folders ``out.mkdir(parents=True)`` is about to create. ``remove()`` deletes the run files that were not
    there before, then those folders while they are empty: never a file or folder that existed before, nor anything
    fastpnr does not write (``run_files``). A resume never makes one: it deletes nothing."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.before = frozenset(p.name for p in run_files(self.out))
        self.new_folders = missing_folders(self.out)

    def remove(self) -> None:
        try:
            clear_run_files(self.out, keep=self.before)
        except OSError:  # one that cannot be removed: the rest stays too; the run's own error is what to report
            return
        remove_empty_folders(self.new_folders)


# ------------------------------------------------------------------------------------------------ resume
def resume_folder(path: str | os.PathLike) -> Path:
    """The run folder to resume from ``path``: a run folder, or its ``checkpoint.pt``."""
    p = Path(path)
    accepted = f"pass the run folder (written by `fastpnr train --out`) or its {CHECKPOINT}"
    if p.is_dir():
        if not (p / CHECKPOINT).is_file():
            raise DataError(f"--resume {p}: the folder has no {CHECKPOINT}, so it holds no resumable run; {accepted}")
        return p
    if TASK_MODEL.fullmatch(p.name):
        raise DataError(f"--resume {p}: {p.name} is the model saved after a task (for `fastpnr linear` / "
                        f"`fastpnr knn`), not a resumable checkpoint; {accepted}, e.g. --resume {p.parent}")
    if not p.exists():
        raise DataError(f"--resume {p}: no such folder or file; {accepted}")
    if p.name != CHECKPOINT:
        raise DataError(f"--resume {p}: not a run checkpoint; {accepted}")
    return p.parent


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(old: dict, new: dict) -> dict:
    """{field: (old, new)} for every dotted field whose value differs between two ``RunConfig.to_dict()``."""
    a, b = _flatten(old), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_changes(changes: dict, allow: bool) -> dict:
    """The changes that can change the numbers; raise unless ``allow`` when there are any."""
    risky = {k: v for k, v in changes.items() if k not in RESUME_SAFE}
    if risky and not allow:
        listed = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in risky.items())
        raise ConfigError(f"--resume with settings that can change the results: {listed}; allowed to change: "
                          f"{', '.join(RESUME_SAFE)}; pass --allow-config-change to resume anyway (recorded in "
                          "metrics.json)")
    return risky


# ------------------------------------------------------------------------------------------------ TensorBoard
class ScalarLog:
    """A TensorBoard SummaryWriter that remembers the last step written per tag (``last_steps``, checkpointed), and
    sends each scalar to wandb as well when a ``wandb_log.WandbLog`` is given.

    Any ``add_*(tag, value, global_step, ...)`` of SummaryWriter works and is tracked (scalars, images, figures);
    ``add_scalar`` is the one wandb gets. ``wandb_id``: the wandb run's id (kept from the checkpoint while wandb is
    off, so that a later resume with wandb continues that run)."""

    def __init__(self, path: Path, last_steps: dict | None = None, wandb=None, wandb_id: str | None = None,
                 tensorboard: bool = True):
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(path))
        self.last_steps = dict(last_steps or {})
        self.wandb = wandb
        self.wandb_id = wandb.run_id if wandb is not None else wandb_id

    def __getattr__(self, name):
        if not name.startswith("add_"):
            raise AttributeError(name)
        add = getattr(self.writer, name) if self.writer is not None else None

        def tracked(tag, value, global_step=None, *args, **kwargs):
            if add is not None:
                add(tag, value, global_step, *args, **kwargs)
            step = int(global_step or 0)  # TensorBoard writes a missing step as 0
            self.last_steps[tag] = max(step, self.last_steps.get(tag, step))
            if self.wandb is not None and name == "add_scalar":
                self.wandb.scalar(tag, value, step)
        return tracked

    def task_done(self, task: int, metrics: dict, heatmap: Path | None = None) -> None:
        """After task ``task``'s metrics files are written: wandb gets the heatmap and the metrics (summary)."""
        if self.wandb is not None:
            self.wandb.task_done(task, metrics, heatmap)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()


def open_scalar_log(path: Path, last_steps: dict | None = None, wandb=None, wandb_id: str | None = None) -> ScalarLog | None:
    """A ScalarLog in ``path`` (on resume: after ``prune_events``), or None without tensorboard and wandb."""
    try:
        import tensorboard  # noqa: F401  (a core requirement; tolerated absent in odd environments)
    except ImportError:
        return None if wandb is None and wandb_id is None else ScalarLog(path, last_steps, wandb, wandb_id, False)
    if last_steps is not None and path.is_dir():
        prune_events(path, last_steps)
    return ScalarLog(path, last_steps, wandb, wandb_id)


def open_run_log(out: Path, cfg, ckpt: dict | None) -> ScalarLog | None:
    """The run's scalar log: TensorBoard in ``out/tb`` and, with ``cfg.train.wandb``, a wandb run (the checkpoint's
    run id on resume: the same wandb run continues)."""
    wandb_id = ckpt.get("wandb_id") if ckpt else None
    wandb = None
    if cfg.train.wandb:
        from .wandb_log import WandbLog

        wandb = WandbLog(cfg, out, wandb_id)
    return open_scalar_log(out / TENSORBOARD, ckpt.get("tensorboard_last_steps") if ckpt else None, wandb, wandb_id)


def prune_events(path: Path, last_steps: dict) -> None:
    """Rewrite each event file in ``path`` without the summaries written after the checkpoint: a (tag, step) is kept
    if ``step <= last_steps[tag]``. Events without summaries (file version, graphs) are kept."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    for file in sorted(path.glob("events.out.tfevents.*")):
        records = list(RawEventFileLoader(str(file)).Load())
        kept = [r for r in records if _keep(Event.FromString(r), last_steps)]
        if len(kept) == len(records):
            continue
        with atomic_file(file) as f:
            writer = RecordWriter(f)
            for r in kept:
                writer.write(r)


def _keep(event, last_steps: dict) -> bool:
    if not event.HasField("summary"):
        return True
    return all(event.step <= last_steps.get(v.tag, -1) for v in event.summary.value)
