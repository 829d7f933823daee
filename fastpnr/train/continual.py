"""The continual loop: tasks in sequence, evaluation after each, atomic checkpoints.

One screen per phase: setup (``_setup``: checks, folder, data, model, checkpoint, display), task (``_train_task``),
epoch (``_train_epoch``), evaluate (``_evaluate``, ``_finish_task``), checkpoint (``_save``). The run's data is a
``task_data.TaskData``, its evaluation a ``protocols.Evaluator``, its metrics ``run_metrics``'s; the files of the
run folder are listed in ``run_folder``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


from fastpnr.system import preempt
from fastpnr.run import metrics as run_metrics
from fastpnr.system.checkpoint import atomic_save, load_checkpoint, loop_state, set_rng_state
from fastpnr.config import RunConfig, config_from_dict, config_warnings, config_with_overrides, format_config
from fastpnr.errors import FastPNRError, require
from .optim import set_lr
from fastpnr.run.progress import TrainProgress, position_label, task_label
from fastpnr.eval.protocols import Evaluator
from fastpnr.regularizers import task_epochs, task_phases
from fastpnr.regularizers.replay_loader import with_replay
from fastpnr.run.folder import (CHECKPOINT, NewRunFiles, check_new_run_folder, check_resume_changes,
                                check_writable_folder, config_changes, open_run_log, resume_folder)
from .build import build_models
from fastpnr.system.runtime import cpu_lines, resolve_auto, setup_process
from fastpnr.data.task_data import TaskData, cycle
from . import stream_loop
from .trainer import phase_trainer
from fastpnr.system.atomic import write_json


class ContinualRun:
    """Train ``cfg.data.num_tasks`` tasks in sequence and evaluate after each one."""

    def __init__(self, cfg: RunConfig, out: str | os.PathLike, resume: bool = False, log=print, overwrite: bool = False,
                 allow_config_change: bool = False, checkpoint: dict | None = None, dist=None):
        """``overwrite``: a new run may replace the run in ``out`` (its files are deleted first); ``resume``: continue
        it from ``checkpoint`` (default: ``out/checkpoint.pt``), with ``allow_config_change`` for settings that
        change the numbers (``run_folder.RESUME_SAFE`` may always change)."""
        self.cfg, self.out = cfg, Path(out)
        self.resume, self.overwrite, self.allow_config_change = resume, overwrite, allow_config_change
        self._checkpoint, self._config_changes = checkpoint, {}
        self.progress = self.writer = None  # open during fit()
        self._new_files = self.task_clock = None  # set during fit()
        self._signal = preempt.NEVER  # the stop request of fit() (preempt.stop_on_signals)
        # torchrun: one process per device; only rank 0 logs and writes run files (through dist.main_only)
        self.device, self.dist = setup_process(cfg, dist)
        self.cfg = cfg = resolve_auto(cfg, self.device)  # train.precision auto: the precision for this device, and why
        self.log = self._sink = self.dist.main_only(log)
        self.write_json, self.save_file = self.dist.main_only(write_json), self.dist.main_only(atomic_save)

    def fit(self, stop_after_epochs: int | None = None, stop_before_eval: int | None = None) -> dict:
        """Run (or resume) all tasks. Simulated kills (tests): ``stop_after_epochs`` after that many epochs;
        ``stop_before_eval`` after task ``t``'s training and its checkpoint, before its evaluation.
        Under torchrun, a collective that fails because another rank stopped raises one line naming that rank."""
        with self.dist.peer_failures_named():
            return self._fit(stop_after_epochs, stop_before_eval)

    def _fit(self, stop_after_epochs: int | None, stop_before_eval: int | None) -> dict:
        self._stops, self._epochs_run = {"epochs": stop_after_epochs, "eval": stop_before_eval}, 0
        self._new_files, self.task_clock = None, None
        try:
            with preempt.stop_on_signals() as self._signal:  # SIGTERM / SIGUSR2: checkpoint at the next step, exit
                ckpt = self._setup()
                for task in range(self.start_task, self.last_task):
                    resumed = ckpt if task == self.start_task else None
                    if resumed is not None and resumed.get("phase") == "evaluate":
                        set_rng_state(resumed["rng"])  # the state the uninterrupted run evaluated with
                    else:
                        self._train_task(task, resumed)
                    self._finish_task(task)
                    if task + 1 < self.last_task:
                        self._stop_if_requested(task + 1, 0)  # the next task's checkpoint is written
        except _Interrupted:
            self.log(f"stopped after {self._epochs_run} epochs (simulated interruption); resume with --resume {self.out}")
            return self.metrics
        except BaseException:  # also Ctrl-C
            self._teardown()  # TensorBoard's files closed before they are removed
            if self._new_files is not None:  # stopped before the first checkpoint: nothing here is resumable
                self.dist.main_only(self._new_files.remove)()
            raise
        finally:
            self._teardown()
        T = loop_tasks(self.cfg)
        if self.last_task < T:
            self.log(f"stopped after {task_label(self.last_task - 1, T)} (train.max_tasks={self.last_task}); continue with "
                     f"--resume {self.out} --train.max_tasks {T}")
        if self.metrics["accuracy_matrix"]:
            self.log(run_metrics.summary(self.metrics))
        return self.metrics

    # ------------------------------------------------------------------------------------------------ setup
    def _setup(self) -> dict | None:
        """Everything before the first step: checks, the run folder, data, model, checkpoint, progress, TensorBoard."""
        cfg = self.cfg
        self.dist.local_batch(cfg.optim.batch_size)  # one line when the world size does not divide the batch
        ckpt = self._preflight()
        self.dist.main_only(check_writable_folder)(self.out)
        if ckpt is None:
            self.dist.main_only(check_new_run_folder)(self.out, self.overwrite)
            self._new_files = NewRunFiles(self.out)  # removed again if the run stops before its first checkpoint
        self.dist.main_only(self.out.mkdir)(parents=True, exist_ok=True)
        self.log(format_config(cfg, out=self.out.resolve()))  # the folder written, not cfg.out (None)
        for line in config_warnings(cfg) + cpu_lines(cfg, self.device):
            self.log(line)
        self.log(f"processes: {self.dist.describe()}, per-rank batch {self.dist.local_batch(cfg.optim.batch_size)}")
        t0 = time.perf_counter()
        with self.dist.main_first():  # rank 0 fills the decode cache, the others read it
            self.data = TaskData(cfg, self.out, self.dist, self.device, log=lambda *a, **k: self.log(*a, **k))
        self.log(f"data: {self.data.summary()} ({time.perf_counter() - t0:.1f}s)")
        self.evaluator = Evaluator(cfg, self.data, self.dist, status=self._status)
        self.steps = [self.data.steps_per_epoch(t) for t in range(self.data.loop_tasks())]
        self.stream = stream_loop.StreamRun(self) if self.data.stream else None  # eval.every_steps, refreshes
        self.write_json(self.out / "config.json", cfg.to_dict())  # from here on the folder holds a run
        # the method (backbone, heads, EMA networks) and the strategy (frozen model, distillers) on the device
        self.method, self.regularizer = build_models(cfg, self.data.num_classes, self.device, self.dist, self.log)
        self.metrics, self.global_step, self.start_task, self.start_epoch = run_metrics.new_metrics(), 0, 0, 0
        if ckpt is not None:
            self._restore(ckpt)
        self.dist.broadcast_module(self.method)  # every rank starts from rank 0's weights and buffers
        self.dist.broadcast_module(self.regularizer)
        self._open_display(ckpt)
        if ckpt is None:  # resumable from here on: the random-init evaluation (forward transfer) resumes into itself
            self._save(0, 0, phase="random_init" if cfg.eval.forward_transfer else "train")
            self._new_files = None  # kept from here on, whatever happens
        self._signal.catch_interrupts(lambda line: self.log(line), self.out)  # Ctrl-C: stop at the next step
        if ckpt is None and cfg.eval.forward_transfer or ckpt is not None and ckpt.get("phase") == "random_init":
            if ckpt is not None:
                set_rng_state(ckpt["rng"])  # the state the uninterrupted run evaluated with
            self._evaluate_random_init()
            self.progress.resume_training()
            self._save(0, 0)
            self._stop_if_requested(0, 0)
            return None  # task 0 trains as in a run that was never stopped
        return ckpt

    def _preflight(self) -> dict | None:
        """Checks that need no data, before the folder is touched; on resume, the checkpoint (read and compared)."""
        from loaders import require_available

        require(self.cfg.train.precision != "fp16" or self.device.type == "cuda", "train.precision", "fp16",
                f"bf16, fp32 or fp64 on {self.device.type} (fp16 needs a CUDA device)")
        require_available(self.cfg.data.loader)
        if not self.resume:
            return None
        ckpt = self._checkpoint if self._checkpoint is not None else load_checkpoint(self.out / CHECKPOINT)
        old = config_from_dict(ckpt["config"]).to_dict()  # fields added since the run take their defaults
        self._config_changes = check_resume_changes(config_changes(old, self.cfg.to_dict()), self.allow_config_change)
        return ckpt

    def _restore(self, ckpt: dict) -> None:
        self.method.load_state_dict(ckpt["method"])
        self.regularizer.load_state_dict(ckpt["regularizer"])
        self.metrics, self.global_step = ckpt["metrics"], ckpt["global_step"]
        self.start_task, self.start_epoch = ckpt["next_task"], ckpt["next_epoch"]
        phase = ckpt.get("phase", "train")
        run_metrics.record_config_changes(self.metrics, self.start_task, self.start_epoch, phase, self._config_changes)
        t = self.start_task
        self.log(f"resumed from {self.out / CHECKPOINT}: {self._checkpoint_label(t, self.start_epoch, phase, ckpt.get('next_step', 0))}")

    def _open_display(self, ckpt: dict | None) -> None:
        """The progress bar (or per-epoch lines; the run's log goes above the bar) and the TensorBoard scalars."""
        T = loop_tasks(self.cfg)
        self.last_task = min(T, self.cfg.train.max_tasks or T)  # train.max_tasks: a partial run stops after these
        total = sum(s * self._task_epochs(t) for t, s in enumerate(self.steps[:self.last_task]))
        # each task's training steps, in metrics.json: a study's ETA counts the steps its cells have left
        self.metrics["train_steps_by_task"] = [s * self._task_epochs(t) for t, s in enumerate(self.steps)]
        done = sum(self.steps[t] * self._task_epochs(t) for t in range(self.start_task))
        done += self.steps[self.start_task] * self.start_epoch if self.start_task < T else 0
        self.progress = TrainProgress(total, done, self.cfg.train.progress and self.dist.is_main, log=self._sink)
        self.log = self.progress.log
        self.writer = self.dist.main_only(open_run_log)(self.out, self.cfg, ckpt)  # TensorBoard (+ wandb)

    def _teardown(self) -> None:
        for opened in (self.progress, self.writer):
            if opened is not None:
                opened.close()
        self.progress, self.writer, self.log = None, None, self._sink

    # ------------------------------------------------------------------------------------------ task, phase, epoch
    def _task_epochs(self, task: int) -> int:
        """The epochs of task ``task``: optim.epochs, or the sum over the regularizer's phases (POCON)."""
        return task_epochs(self.cfg.regularizer, task, loop_epochs(self.cfg))

    def _train_task(self, task: int, ckpt: dict | None) -> None:
        """Task ``task``: its phases in order (each with a fresh optimizer and schedule, as the anchors fresh per
        task), from the checkpoint's ``next_epoch`` when resuming (it counts across the phases), then the checkpoint
        before evaluation. The loaders are the task's: regularizer.replay (ER, LUMP) wraps the training loader."""
        cfg, E, data = self.cfg, self._task_epochs(task), self.data
        first_epoch = ckpt["next_epoch"] if ckpt is not None else 0
        first_step = ckpt.get("next_step", 0) if ckpt is not None else 0  # > 0: a signal stopped that epoch
        if first_epoch == 0 and first_step == 0:
            self.regularizer.begin_task(self.method, task)
        if ckpt is not None:
            set_rng_state(ckpt["rng"])
        loader, probe_loader = data.task_loaders(task, self.method.num_views)
        loader = with_replay(loader, self.regularizer, data.task_seed(task), self.steps[0], self._task_epochs(0),
                             cfg.optim.batch_size, per_step=data.stream, skip=first_step)
        # this task's time so far: its earlier attempts' (a kill mid-task), from the checkpoint, then this one's
        earlier = ckpt.get("task_clock") if ckpt is not None and (first_epoch > 0 or first_step > 0) else None
        self.task_clock = run_metrics.TaskClock.resumed(task, earlier)
        start = 0
        for name, n in task_phases(cfg.regularizer, task, loop_epochs(cfg)):  # (name, epochs): one, or POCON's
            if first_epoch < start + n:
                inside = first_epoch > start or (first_epoch == start and first_step > 0)  # resumed inside the phase
                trainer = phase_trainer(self.method, self.regularizer, task, name, cfg, self.device, self.dist, self.log,
                                        ckpt if inside else None)
                for epoch in range(max(first_epoch, start), start + n):
                    resume_at = ((first_step, lambda: set_rng_state(ckpt["rng"])) if epoch == first_epoch and first_step
                                 else (0, None))
                    self._train_epoch(task, epoch, trainer, loader, probe_loader, (start, n, E), *resume_at)
            start += n
        run_metrics.record_task_training(self.metrics, self.task_clock.state(), self.dist.world_size,
                                         self.dist.local_batch(cfg.optim.batch_size))
        self.task_clock = None  # the task's time is in the metrics now
        self._save(task, E, phase="evaluate")  # a kill during the evaluation keeps the task's training
        if self._stops["eval"] == task:
            raise _Interrupted()
        self._stop_if_requested(task, E, phase="evaluate")  # a stop during the task's last step: before its evaluation

    def _train_epoch(self, task: int, epoch: int, trainer, loader, probe_loader, phase: tuple[int, int, int],
                     start_step=0, on_skipped=None) -> None:
        """One epoch (from ``start_step`` when resumed inside it): steps, TensorBoard scalars, progress, the task's
        clock, checkpoint. ``phase``: (its first epoch in the task, its epochs, the task's epochs); schedules run over
        the phase. A stop signal: the checkpoint after the step in flight, then exit."""
        cfg, T, steps = self.cfg, loop_tasks(self.cfg), self.steps[task]
        start, n, E = phase
        lr = set_lr(trainer.optimizer, epoch - start, n, cfg.optim)
        if lr is not None and start_step == 0:  # at the epoch's first step (a resume inside the epoch logged it)
            self._scalar("train/lr", lr, self.global_step + 1)
        after_step = self.stream.after_step(trainer, task, epoch, start_step) if self.stream is not None else None
        loader.set_epoch(epoch)
        probe_iter = cycle(probe_loader, epoch) if probe_loader is not None else None
        phase_name = self._phase_name(task, epoch)
        self.progress.start_epoch(task, T, epoch, E, phase_name)
        t0, epoch_start = time.perf_counter(), (epoch - start) * steps  # the step in the phase (EMA tau schedule)

        def on_log(step_in_phase, host, ips):  # the trainer's logged terms as scalars at their global step
            at = self.global_step + step_in_phase - epoch_start
            for k, v in host.items():
                self._scalar(f"train/{k}", v, at)
            self._scalar("train/images_per_second", ips, at)

        means, stopped_at = trainer.train_epoch(loader, probe_iter, epoch, epoch_start, steps * n, steps,
                                                progress=self.progress.bar, on_log=on_log, start_step=start_step,
                                                stop=self._signal, on_skipped=on_skipped, after_step=after_step)
        if stopped_at is not None:
            self._save(task, epoch, trainer.optimizer, trainer, next_step=stopped_at)
            self._stop_if_requested(task, epoch, step=stopped_at)
        self.global_step += steps
        # the epoch's means of the logged terms (losses, collapse_std, effective_rank): metrics.json "train_epochs"
        self.metrics.setdefault("train_epochs", []).append({"task": task, "epoch": epoch, **means})
        images = steps * cfg.optim.batch_size
        self.task_clock.images += images  # before the checkpoint, which records them with the time
        self.progress.end_epoch(task, T, epoch, E, steps, images, time.perf_counter() - t0, means, phase_name)
        if epoch + 1 < E:
            self._save(task, epoch + 1, trainer.optimizer, trainer)
            self._stop_if_requested(task, epoch + 1)  # a stop during the epoch's last step
        self._epochs_run += 1
        if self._stops["epochs"] is not None and self._epochs_run >= self._stops["epochs"] and epoch + 1 < E:
            raise _Interrupted()

    def _stop_if_requested(self, task: int, epoch: int, phase: str = "train", step: int = 0):
        """Right after a checkpoint: when a stop signal (SIGTERM, SIGUSR2, Ctrl-C) came, on any rank, say where the
        checkpoint stands and exit with ``preempt.EXIT_CHECKPOINTED``."""
        if self.dist.any_rank(self._signal.requested):
            self.log(self._signal.stop_line(self._checkpoint_label(task, epoch, phase, step), self.out))
            raise preempt.CheckpointedOnSignal(self._signal.signum or 0)

    def _checkpoint_label(self, task: int, epoch: int, phase: str, step: int = 0) -> str:
        """Where a checkpoint (next_task, next_epoch, phase, next_step) stands, in the words of the progress lines."""
        T = loop_tasks(self.cfg)
        if phase == "random_init":
            return "the random-init evaluation"
        if phase == "evaluate":
            return f"{task_label(task, T)}, its evaluation"
        if task >= T:
            return "the end of the run"
        return position_label(task, T, epoch, self._task_epochs(task), step, self._phase_name(task, epoch))

    def _phase_name(self, task: int, epoch: int) -> str | None:
        """The phase that epoch ``epoch`` of task ``task`` trains in, where the task has several (POCON), else None."""
        phases = task_phases(self.cfg.regularizer, task, loop_epochs(self.cfg))
        start = 0
        for name, n in phases:
            if epoch < start + n:
                return name if len(phases) > 1 else None
            start += n
        return None

    def _scalar(self, tag: str, value, step: int) -> None:
        """Every scalar the run logs (TensorBoard, rank 0)."""
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    # ------------------------------------------------------------------------------------------------ evaluate
    def _evaluate_random_init(self) -> None:
        """Accuracy of the untrained model (b_j), the reference of forward transfer (anchors §3.3)."""
        self._eval_label = "evaluating the random-init model"
        acc = run_metrics.record_random_init(self.metrics, self.evaluator.rows(-1, self.method), self.cfg.eval.protocol)
        self.log(f"random-init {self.cfg.eval.protocol} test acc {acc:.2f}%")

    def _evaluate(self, task: int) -> None:
        """Every protocol on the model after ``task``: metrics, TensorBoard scalars, one log line."""
        m, proto, t0 = self.metrics, self.cfg.eval.protocol, time.perf_counter()
        rows = self.evaluator.rows(task, self.method)
        run_metrics.record_task(m, rows, proto, self.data.num_corrupt, self.data.corrupt_images, time.perf_counter() - t0)
        for name in rows:
            self._scalar(f"eval/{name}_test_accuracy", m["test_accuracy_by_protocol"][name][-1], task)
            for j, a in enumerate(m["matrices"][name][-1]):
                self._scalar(f"eval/{name}_task{j}", a, task)
        self.log(run_metrics.task_line(m, task, proto))

    def _finish_task(self, task: int) -> None:
        """Evaluate the trained task; save task{t}.pt, metrics.json, then the checkpoint of the next task."""
        cfg, T = self.cfg, loop_tasks(self.cfg)
        self._eval_label = f"evaluating {task_label(task, T)}"
        self._evaluate(task)
        if self.stream is not None:
            self.stream.record_final()
        self.save_file({"config": cfg.to_dict(), "task": task, "method": self.method.state_dict()}, self.out / f"task{task}.pt")
        self.dist.main_only(run_metrics.write_metrics)(self.out, self.metrics, cfg)
        if self.writer is not None:  # wandb (train.wandb): the heatmap and the metrics after this task
            self.writer.task_done(task, self.metrics, self.out / "accuracy_matrix.png")
        self._save(task + 1, 0)
        self.progress.resume_training()
        stop = self._stops["epochs"]
        if stop is not None and self._epochs_run >= stop and task + 1 < T:
            raise _Interrupted()

    def _status(self, what: str) -> None:
        """The evaluation phase on display (the bar's description, else a log line)."""
        if self.progress is not None:
            self.progress.status(f"{getattr(self, '_eval_label', 'evaluating')}: {what}")

    # ------------------------------------------------------------------------------------------------ checkpoint
    def _save(self, next_task, next_epoch, optimizer=None, trainer=None, phase="train", next_step=0):
        """Checkpoint. phase "train": task ``next_task`` trains from epoch ``next_epoch`` (its step ``next_step``);
        "evaluate": task ``next_task`` is trained and its evaluation comes next; "random_init": the evaluation of the
        untrained model comes next (forward transfer's reference), then task 0."""
        if self.writer is not None:
            self.writer.flush()  # the event files hold every scalar the checkpoint counts
        # the state is the same on every rank; the file is rank 0's (its RNG states, which every rank resumes with)
        where = {"next_task": next_task, "next_epoch": next_epoch, "phase": phase, "next_step": next_step}
        self.save_file(loop_state(self.cfg, where, self.method, self.regularizer, optimizer, trainer, self.metrics,
                                  self.global_step, self.writer, self.task_clock), self.out / CHECKPOINT)
        self._signal.checkpoint_at = self._checkpoint_label(next_task, next_epoch, phase, next_step)  # a 2nd Ctrl-C

class _Interrupted(Exception):
    pass


def loop_tasks(cfg) -> int:
    """The tasks the loop trains: data.num_tasks, or one for the stream (its chunks are inside the one loader)."""
    return 1 if cfg.data.scenario == "stream" else cfg.data.num_tasks


def loop_epochs(cfg) -> int:
    """The loop's epochs per task: optim.epochs, or one for the stream (its passes per chunk are inside the loader)."""
    return 1 if cfg.data.scenario == "stream" else cfg.optim.epochs


def resume_run(path, overrides: dict | None = None, allow_config_change: bool = False, log=print) -> dict:
    """Continue the run in ``path`` (a run folder or its checkpoint.pt) from its last checkpoint, with the configuration
    it was started with plus ``overrides`` (dotted, as on the command line; see ``run_folder.RESUME_SAFE``)."""
    run_dir = resume_folder(path)
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    cfg = config_with_overrides(ckpt["config"], overrides or {})
    if ckpt["next_task"] >= loop_tasks(cfg):
        raise FastPNRError(f"the run in {run_dir} is already complete ({loop_tasks(cfg)} tasks); see metrics.json")
    run = ContinualRun(cfg, run_dir, resume=True, log=log, allow_config_change=allow_config_change, checkpoint=ckpt)
    return run.fit()
