"""Weights & Biases logging of a run (``--train.wandb PROJECT``; the ``[wandb]`` extra, imported only when asked for).

What a run logs there (``run_folder.ScalarLog`` fans every TensorBoard scalar out to this):
- the configuration (``RunConfig.to_dict``, as in config.json) at the start;
- the TensorBoard scalars under their TensorBoard tags: ``train/*`` against the step metric ``global_step`` (the
  training step), ``eval/*`` against ``task`` (the task just evaluated, 0-based as in task{t}.pt);
- after each task, the accuracy-matrix heatmap (accuracy_matrix.png) as ``eval/accuracy_matrix`` against ``task``,
  and the run's metrics as the wandb summary (A_T, average incremental accuracy, forgetting, forward transfer, the
  matrix, tasks done): after the last task, the final metrics.

Mode (``train.wandb_mode``): ``auto`` follows an explicit ``WANDB_MODE``, else logs online when a login
exists (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or the wandb host in ``$NETRC`` / ``~/.netrc``) and
offline otherwise (``wandb sync RUN/wandb/offline-run-*`` uploads it later). Files go to ``RUN/wandb/`` unless
``WANDB_DIR`` is set. The run's id is generated here, kept in every checkpoint, and a resumed run continues the same
wandb run (``resume="allow"``: an offline run that was never synced is created under that id). wandb's history
cannot be rewritten: the steps between the last checkpoint and a kill may appear twice after a resume (TensorBoard's
are pruned, ``run_folder.prune_events``).
"""
from __future__ import annotations

import netrc
import os
import secrets
import string
import sys
from pathlib import Path
from urllib.parse import urlsplit

from fastpnr.errors import FastPNRError

WANDB_FOLDER = "wandb"  # in the run folder (run_folder.RUN_FILES), unless WANDB_DIR is set
STEP_OF = {"train/": "global_step", "eval/": "task"}
SUMMARY_KEYS = ("final_average_accuracy", "average_incremental_accuracy", "forgetting", "forward_transfer",
                "accuracy_matrix", "accuracy_matrix_std", "test_accuracy", "random_init_accuracy", "task_time_s",
                "images_per_second", "num_corrupt")


def has_login(environ=os.environ) -> bool:
    """Whether wandb would find credentials: an API key or identity-token file in the environment, or the wandb
    host (``WANDB_BASE_URL``, default api.wandb.ai) in the netrc file (``$NETRC``, else ``~/.netrc``)."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    path = Path(environ["NETRC"]).expanduser() if environ.get("NETRC") else Path("~/.netrc").expanduser()
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


ENV_MODES = {"dryrun": "offline", "run": "online"}  # WANDB_MODE's older spellings


def resolve_mode(setting: str, environ=os.environ) -> str:
    """The ``mode`` for wandb.init: ``setting`` when online/offline; for auto, the user's WANDB_MODE when set, else
    online with a login and offline without one. Always explicit: wandb reads WANDB_MODE once per process (its
    settings singleton), so a run started later in the same process would not see a WANDB_MODE set since."""
    if setting != "auto":
        return setting
    env = environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return ENV_MODES.get(env, env)
    return "online" if has_login(environ) else "offline"


def new_run_id(length: int = 8) -> str:
    """A fresh wandb run id (lowercase letters and digits, as wandb's own ids), chosen here so that the checkpoint
    can hold it before wandb.init returns."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def step_metric(tag: str) -> str:
    """The x-axis of a tag: ``global_step`` for train/*, ``task`` for eval/* (TensorBoard's step of that tag)."""
    return next((axis for prefix, axis in STEP_OF.items() if tag.startswith(prefix)), "global_step")


class WandbLog:
    """One wandb run of a fastpnr run: scalars as rows per (axis, step), the heatmap and summary after each task."""

    def __init__(self, cfg, out: Path, run_id: str | None = None):
        import wandb

        t = cfg.train
        self.wandb = wandb
        self.run_id = run_id or new_run_id()
        # wandb writes <dir>/wandb/; passed explicitly, since wandb reads WANDB_DIR once per process
        folder = os.environ.get("WANDB_DIR") or str(out)
        # console off: the run's stdout stays the terminal's (progress bars, the study's train.log)
        try:
            self.run = wandb.init(project=t.wandb, entity=t.wandb_entity, group=t.wandb_group,
                                  name=t.wandb_name or Path(out).resolve().name, id=self.run_id, resume="allow",
                                  config=cfg.to_dict(), dir=folder,
                                  mode=resolve_mode(t.wandb_mode), settings=wandb.Settings(console="off", silent=True))
        except Exception as e:  # noqa: BLE001 - login, network or settings: one line, with the way out
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise FastPNRError(f"wandb.init for train.wandb={t.wandb!r} failed ({type(e).__name__}: {first}); check "
                               "the login (wandb login) or log offline with --train.wandb_mode offline") from None
        for axis in set(STEP_OF.values()):
            self.run.define_metric(axis)
        for prefix, axis in STEP_OF.items():
            self.run.define_metric(f"{prefix}*", step_metric=axis)
        self._row: dict = {}
        self._at: tuple | None = None

    def scalar(self, tag: str, value, step: int) -> None:
        """Buffer ``tag`` at ``step`` of its axis; the row is logged when the axis or step changes, or on flush."""
        at = (step_metric(tag), int(step))
        if at != self._at:
            self.flush()
            self._at = at
        self._row[tag] = float(value)

    def flush(self) -> None:
        if self._row:
            axis, step = self._at
            self.run.log({**self._row, axis: step})
        self._row, self._at = {}, None

    def task_done(self, task: int, metrics: dict, heatmap: Path | None) -> None:
        """After task ``task``'s metrics files: its heatmap against ``task`` and the metrics so far as the summary."""
        self.flush()
        if heatmap is not None and Path(heatmap).is_file():
            self.run.log({"eval/accuracy_matrix": self.wandb.Image(str(heatmap), caption=f"after task {task}"),
                          "task": task})
        for key in SUMMARY_KEYS:
            if metrics.get(key) is not None:
                self.run.summary[key] = metrics[key]
        self.run.summary["tasks_done"] = task + 1

    def close(self) -> None:
        """Finish the wandb run; exit code 1 when closed while an exception propagates (the run's teardown in a
        ``finally``), so that W&B shows a failed run as failed."""
        self.flush()
        self.run.finish(exit_code=1 if sys.exc_info()[0] is not None else 0)
