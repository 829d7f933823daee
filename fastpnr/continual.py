"""The continual loop: tasks in sequence, evaluation after each, atomic checkpoints, metrics and plots.

Run folder (``--out``; one run per folder, ``run_folder.RUN_FILES``):
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

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed
from . import evaluation as ev
from .checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from .config import RunConfig, config_from_dict, config_with_overrides, format_config
from .errors import ConfigError, FastPNRError, require
from .methods import build_method
from .optim import build_optimizer, set_lr
from .regularizers import build_regularizer
from .progress import TrainProgress
from .run_folder import (CHECKPOINT, TASK_INDICES, TENSORBOARD, check_new_run_folder, check_resume_changes,
                         config_changes, open_scalar_log, resume_folder)
from .trainer import AUTOCAST_DTYPES, Trainer, compile_backbone


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} is invalid; allowed here: cpu, auto (no CUDA device is visible)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _subsample(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    if fraction >= 1:
        return indices
    rng = np.random.default_rng(seed)
    keep = max(1, int(round(len(indices) * fraction)))
    return np.sort(rng.choice(indices, size=keep, replace=False))


def _split_seeds(d, num_tasks: int) -> dict:
    """Every seed that makes a run's split (recorded in tasks.json): the class order (class-IL), the data-IL
    random_split, and the subsamples of each task's images, of the test set and of the evaluation train set."""
    return {"class_order": d.split_seed, "data_split": d.data_split_seed,
            "train_subsample": [d.split_seed + 1000 + t for t in range(num_tasks)],
            "test_subsample": d.split_seed + 999, "eval_train_subsample": d.split_seed + 998}


def _write_task_indices(path: Path, task_train, test_all, test_parts, eval_train) -> None:
    """tasks_indices.npz: `task{t}` the train-split indices task t trained on; `test` the test-split indices
    evaluated, `test_task{t}` those of task t; `eval_train` the train-split indices the probes fit on."""
    arrays = {f"task{t}": np.asarray(idx, np.int64) for t, idx in enumerate(task_train)}
    arrays.update({f"test_task{t}": np.asarray(test_all, np.int64)[p] for t, p in enumerate(test_parts)})
    arrays.update(test=np.asarray(test_all, np.int64), eval_train=np.asarray(eval_train, np.int64))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _data_note(datasets) -> str:
    """" skipped={...}" counts for the run's "data:" line (nothing when nothing was skipped)."""
    counts: dict[str, int] = {}
    for ds in datasets:
        for kind, n in ds.skipped.counts().items():
            if n:
                counts[kind] = counts.get(kind, 0) + n
    return f" skipped={counts}" if counts else ""


CORRUPT_LOG_MAX = 20  # corrupt images named one per line; the rest are counted (all are in tasks.json, metrics.json)


def _log_skipped(log, ds) -> None:
    """One line for what the listing of ``ds`` skipped, one per corrupt image skipped (each once)."""
    if ds.skipped.total():
        log(f"data: skipped in {ds.name}/{ds.split}: {ds.skipped.describe()} (names in tasks.json)")
    for member, reason in ds.corrupt[:CORRUPT_LOG_MAX]:
        log(f"data: skipped corrupt image {member}: {reason}")
    if len(ds.corrupt) > CORRUPT_LOG_MAX:
        log(f"data: ... and {len(ds.corrupt) - CORRUPT_LOG_MAX} more corrupt images in {ds.name}/{ds.split} "
            f"(all named in tasks.json and metrics.json)")


class ContinualRun:
    """Train ``cfg.data.num_tasks`` tasks in sequence and evaluate after each one."""

    def __init__(self, cfg: RunConfig, out: str | os.PathLike, resume: bool = False, log=print, overwrite: bool = False,
                 allow_config_change: bool = False, checkpoint: dict | None = None, dist=None):
        """``overwrite``: a new run may replace the run in ``out`` (its files are deleted first); ``resume``: continue
        it from ``checkpoint`` (default: ``out/checkpoint.pt``), with ``allow_config_change`` for settings that
        change the numbers (``run_folder.RESUME_SAFE`` may always change)."""
        self.cfg = cfg
        self.out = Path(out)
        self.resume, self.overwrite, self.allow_config_change = resume, overwrite, allow_config_change
        self._checkpoint, self._config_changes = checkpoint, {}
        self.progress = self.writer = None  # open during fit()
        self.device = resolve_device(cfg.train.device)
        # torchrun: one process per device; only rank 0 logs and writes run files (through dist.main_only)
        self.dist = dist if dist is not None else distributed.from_env(self.device, cfg.dist)
        self.device = getattr(self.dist, "device", self.device)
        self.log = self._sink = self.dist.main_only(log)
        self.write_json, self.save_file = self.dist.main_only(_write_json), self.dist.main_only(atomic_save)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.train.deterministic

    # ------------------------------------------------------------------------------------------------ setup
    def _load_data(self, write_tasks: bool = True):
        from .data import load_dataset
        from .data.registry import get_spec
        from .scenarios import describe_tasks, make_tasks, task_test_indices

        d = self.cfg.data
        spec = get_spec(d.dataset)
        eval_split = spec.splits[-1] if spec.splits else "val"
        kw = dict(image_size=d.image_size, resize=d.resize, skip_corrupt=d.skip_corrupt, cache_dir=d.cache_dir, progress=self.cfg.train.progress,
                  download=d.download)
        self.train_set = load_dataset(d.dataset, "train", d.data_dir, **kw)
        self.test_set = load_dataset(d.dataset, eval_split, d.data_dir, **kw)
        self.num_corrupt = int(self.train_set.num_corrupt + self.test_set.num_corrupt)
        self.corrupt_images = self.train_set.corrupt_images + self.test_set.corrupt_images  # metrics.json
        self.tasks = make_tasks(d.scenario, self.train_set, d.num_tasks, seed=d.split_seed, data_seed=d.data_split_seed,
                                domain_order=d.domain_order)
        self.seeds = seeds = _split_seeds(d, len(self.tasks))  # recorded in tasks.json
        self.task_train = [_subsample(t.train_indices, d.train_fraction, s)
                           for t, s in zip(self.tasks, seeds["train_subsample"])]
        test_all = _subsample(np.arange(len(self.test_set)), d.test_fraction, seeds["test_subsample"])
        parts = task_test_indices(d.scenario, self.tasks, self.test_set)
        # Positions inside ``test_all`` of each task's test images.
        pos = {int(i): k for k, i in enumerate(test_all)}
        self.test_indices = test_all
        self.test_parts = [np.array([pos[int(i)] for i in p if int(i) in pos], dtype=np.int64) for p in parts]
        self.eval_train = _subsample(np.arange(len(self.train_set)), self.cfg.eval.train_fraction,
                                     seeds["eval_train_subsample"])
        self.num_classes = len(self.train_set.classes)
        if write_tasks:
            self.write_json(self.out / "tasks.json", self._describe_data(describe_tasks(self.tasks, self.train_set)))
            self.dist.main_only(_write_task_indices)(self.out / TASK_INDICES, self.task_train, test_all, self.test_parts,
                                                      self.eval_train)
        self.data_note = _data_note([self.train_set, self.test_set])
        for ds in (self.train_set, self.test_set):
            _log_skipped(self.log, ds)
        self.image_size = self.train_set.images.shape[1] if self.train_set.images is not None else (d.image_size or spec.native_size)
        self.crop_size = d.crop_size or self.image_size

    def _describe_data(self, desc: dict) -> dict:
        """tasks.json: ``describe_tasks`` plus the images used per task, the seeds and fractions of the split (the
        split itself is in tasks_indices.npz), and what was skipped: files per split, corrupt images."""
        d = self.cfg.data
        desc["scenario"] = d.scenario
        for t, item in enumerate(desc["tasks"]):
            item["train_images_used"] = int(len(self.task_train[t]))
            item["test_images"] = int(len(self.test_parts[t]))
        desc["seeds"] = self.seeds
        desc["fractions"] = {"train": d.train_fraction, "test": d.test_fraction, "eval_train": self.cfg.eval.train_fraction}
        desc["indices_file"] = TASK_INDICES
        desc["skipped"] = {ds.split: ds.skipped.to_json() for ds in (self.train_set, self.test_set)}
        desc["corrupt_images"] = self.corrupt_images
        return desc

    def _view_configs(self):
        from loaders import ViewConfig

        d = self.cfg.data
        mean, std = self.train_set.mean, self.train_set.std
        views = []
        for v in range(self.method.num_views):
            pick = lambda probs: probs[min(v % 2, len(probs) - 1)]  # asymmetric per-view recipes (BYOL-style)
            views.append(ViewConfig(size=self.crop_size, crop_scale=(d.min_scale, 1.0), blur_prob=pick(d.blur_prob),
                                    solarize_prob=pick(d.solarize_prob), mean=mean, std=std))
        return views

    def _build(self):
        cfg = self.cfg
        seed_everything(cfg.train.seed)
        self.method = build_method(cfg.method, cfg.model, self.num_classes)
        self.regularizer = build_regularizer(cfg.regularizer, self.method)
        memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
        if self.dist.enabled and cfg.dist.sync_batchnorm:  # the online, EMA and frozen models: global-batch BN
            distributed.convert_batchnorm(self.method)
            distributed.convert_batchnorm(self.regularizer)
        self.method.dist = self.regularizer.dist = self.dist
        self.method.to(self.device, memory_format=memory_format)
        self.regularizer.to(self.device, memory_format=memory_format)
        if compile_backbone(self.method, cfg.train):
            self.log(f"[fastpnr] torch.compile of the backbone: mode {cfg.train.compile}, backend "
                     f"{cfg.train.compile_backend} (compiles on the first steps)")

    def _loader(self, indices, num_views, view_configs, seed, shuffle=True, drop_last=True):
        """The task's loader, wrapped in ``loaders.Prefetcher``: on CUDA the next batch is produced on a side stream
        while the current step runs (values unchanged; ``data.prefetch false`` turns it off); elsewhere the wrapper
        is the loader itself."""
        from loaders import Prefetcher, make_loader

        kind, extra = self.cfg.data.loader, {}
        source = self.train_set
        if kind == "ffcv":  # a .beton of the train split, written once next to the decode cache
            source = self._train_beton()
            d = self.cfg.data
            extra = {"mean": self.train_set.mean, "std": self.train_set.std, "num_workers": d.num_workers,
                     "order": d.ffcv_order, "os_cache": d.ffcv_os_cache, "batches_ahead": d.ffcv_batches_ahead,
                     "crop": d.ffcv_crop}
        elif kind == "dali":  # DALI decodes the original JPEG bytes itself
            source = self._encoded_train_set()
        elif kind == "torchvision":
            extra = {"num_workers": self.cfg.data.num_workers}
        batch = self.cfg.optim.batch_size
        loader = make_loader(kind, source, batch_size=batch, num_views=num_views,
                             device=self.device, seed=seed, shuffle=shuffle, drop_last=drop_last,
                             view_configs=view_configs, subset=indices,
                             shard=self.dist.shard(batch) if self.dist.enabled else None, **extra)
        return Prefetcher(loader, self.device, ahead=None if self.cfg.data.prefetch else False)

    def _train_beton(self) -> str:
        from loaders.ffcv_ops import write_beton

        from .data import cache_root

        d = self.cfg.data
        size = "native" if not d.image_size else f"{d.image_size}" + ("" if d.resize == "stretch" else f"-{d.resize}")
        path = cache_root(d.cache_dir) / "betons" / f"{d.dataset}-train-{size}-{len(self.train_set)}.beton"
        with self.dist.main_first():
            if not path.exists():
                self.log(f"writing {path} (once) for the ffcv loader")
                path.parent.mkdir(parents=True, exist_ok=True)
                write_beton(self.train_set, path, num_workers=max(1, self.cfg.data.num_workers))
        return str(path)

    def _encoded_train_set(self):
        if getattr(self, "_encoded_train", None) is None:
            from .data import load_dataset

            d = self.cfg.data
            self._encoded_train = load_dataset(d.dataset, "train", d.data_dir, decode=False, skip_corrupt=d.skip_corrupt,
                                               cache_dir=d.cache_dir, download=d.download)
        return self._encoded_train

    # ------------------------------------------------------------------------------------------------ state
    def _state(self, next_task, next_epoch, optimizer, trainer, phase) -> dict:
        return {
            "format": 2, "config": self.cfg.to_dict(), "next_task": next_task, "next_epoch": next_epoch, "phase": phase,
            "method": self.method.state_dict(), "regularizer": self.regularizer.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scaler": trainer.scaler.state_dict() if trainer is not None else None,
            "rng": rng_state(), "metrics": self.metrics, "global_step": self.global_step,
            "tensorboard_last_steps": dict(self.writer.last_steps) if self.writer is not None else None,
            "launch_id": distributed.launch_id(),  # the torchrun invocation that wrote it (its elastic restarts resume)
        }

    def _save(self, next_task, next_epoch, optimizer=None, trainer=None, phase="train"):
        """Checkpoint. phase "train": task ``next_task`` trains from epoch ``next_epoch``; "evaluate": task
        ``next_task`` is trained and its evaluation comes next."""
        if self.writer is not None:
            self.writer.flush()  # the event files hold every scalar the checkpoint counts
        # the state is the same on every rank; the file is rank 0's (its RNG states, which every rank resumes with)
        self.save_file(self._state(next_task, next_epoch, optimizer, trainer, phase), self.out / CHECKPOINT)

    # ------------------------------------------------------------------------------------------------ run
    def fit(self, stop_after_epochs: int | None = None, stop_before_eval: int | None = None) -> dict:
        """Run (or resume) all tasks. Simulated kills (tests): ``stop_after_epochs`` after that many epochs;
        ``stop_before_eval`` after task ``t``'s training and its checkpoint, before its evaluation.
        Under torchrun, a collective that fails because another rank stopped raises one line naming that rank."""
        try:
            return self._fit(stop_after_epochs, stop_before_eval)
        except Exception as e:  # noqa: BLE001 - re-raised, as a PeerFailure when a peer is gone
            failure = self.dist.failure(e)
            if failure is e:
                raise
            raise failure from None

    def _fit(self, stop_after_epochs: int | None, stop_before_eval: int | None) -> dict:
        self._stops, self._epochs_run = {"epochs": stop_after_epochs, "eval": stop_before_eval}, 0
        try:
            ckpt = self._setup()
            for task in range(self.start_task, self.last_task):
                resumed = ckpt if task == self.start_task else None
                if resumed is not None and resumed.get("phase") == "evaluate":
                    set_rng_state(resumed["rng"])  # the state the uninterrupted run evaluated with
                else:
                    self._train_task(task, resumed)
                self._finish_task(task)
        except _Interrupted:
            self.log(f"stopped after {self._epochs_run} epochs (simulated interruption); resume with --resume {self.out}")
            return self.metrics
        finally:
            self._teardown()
        T = self.cfg.data.num_tasks
        if self.last_task < T:
            self.log(f"stopped after task {self.last_task - 1} of {T} (train.max_tasks={self.last_task}); continue with "
                     f"--resume {self.out} --train.max_tasks {T}")
        if self.metrics["accuracy_matrix"]:
            self.log(_summary(self.metrics))
        return self.metrics

    def _setup(self) -> dict | None:
        """Everything before the first step: checks, the run folder, data, model, checkpoint, progress, TensorBoard."""
        cfg = self.cfg
        self.dist.local_batch(cfg.optim.batch_size)  # one line when the world size does not divide the batch
        ckpt = self._preflight()
        if ckpt is None:
            self.dist.main_only(check_new_run_folder)(self.out, self.overwrite)
        self.dist.main_only(self.out.mkdir)(parents=True, exist_ok=True)
        self.log(format_config(cfg))
        self.log(f"processes: {self.dist.describe()}, per-rank batch {self.dist.local_batch(cfg.optim.batch_size)}")
        t0 = time.perf_counter()
        with self.dist.main_first():  # rank 0 fills the decode cache, the others read it
            self._load_data()
        self.log(f"data: {self.cfg.data.dataset} train={len(self.train_set)} test={len(self.test_indices)} "
                 f"tasks={[len(t) for t in self.task_train]} corrupt={self.num_corrupt}{self.data_note} ({time.perf_counter() - t0:.1f}s)")
        self.steps = [self._steps_per_epoch(len(idx)) for idx in self.task_train]
        self.write_json(self.out / "config.json", cfg.to_dict())  # from here on the folder holds a run
        self._build()
        self.metrics = {"accuracy_matrix": [], "test_accuracy": [], "matrices": {}, "task_time_s": [], "images_per_second": []}
        self.global_step, self.start_task, self.start_epoch = 0, 0, 0
        if ckpt is not None:
            self._restore(ckpt)
        self.dist.broadcast_module(self.method)  # every rank starts from rank 0's weights and buffers
        self.dist.broadcast_module(self.regularizer)
        self._open_display(ckpt)
        if ckpt is None:
            if cfg.eval.forward_transfer:
                self._evaluate_random_init()
                self.progress.resume_training()
            self._save(0, 0)  # resumable from the first step on
        return ckpt

    def _preflight(self) -> dict | None:
        """Checks that need no data, before the folder is touched; on resume, the checkpoint (read and compared)."""
        from loaders import require_available

        require(self.cfg.train.precision != "fp16" or self.device.type == "cuda", "train.precision", "fp16",
                f"bf16 or fp32 on {self.device.type} (fp16 needs a CUDA device)")
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
        if self._config_changes:  # allowed by --allow-config-change: on record
            self.metrics.setdefault("resume_config_changes", []).append(
                {"task": self.start_task, "epoch": self.start_epoch, "phase": phase,
                 "changes": {k: [old, new] for k, (old, new) in self._config_changes.items()}})
        self.log(f"resumed from {self.out / CHECKPOINT}: task {self.start_task}, "
                 + ("its evaluation" if phase == "evaluate" else f"epoch {self.start_epoch}"))

    def _open_display(self, ckpt: dict | None) -> None:
        """The progress bar (or per-epoch lines; the run's log goes above the bar) and the TensorBoard scalars."""
        T = self.cfg.data.num_tasks
        self.last_task = min(T, self.cfg.train.max_tasks or T)  # train.max_tasks: a partial run stops after these
        total = sum(s * self._task_epochs(t) for t, s in enumerate(self.steps[:self.last_task]))
        done = sum(self.steps[t] * self._task_epochs(t) for t in range(self.start_task))
        done += self.steps[self.start_task] * self.start_epoch if self.start_task < T else 0
        self.progress = TrainProgress(total, done, self.cfg.train.progress and self.dist.is_main, log=self._sink)
        self.log = self.progress.log
        self.writer = self.dist.main_only(open_scalar_log)(self.out / TENSORBOARD, ckpt.get("tensorboard_last_steps") if ckpt else None)

    def _teardown(self) -> None:
        for opened in (self.progress, self.writer):
            if opened is not None:
                opened.close()
        self.progress, self.writer, self.log = None, None, self._sink

    def _task_phases(self, task: int) -> list[tuple[str, int]]:
        """(name, epochs) of task ``task``'s training phases: one of optim.epochs, or the regularizer's (POCON)."""
        return self.regularizer.phases(task, self.cfg.optim.epochs)

    def _task_epochs(self, task: int) -> int:
        return sum(n for _, n in self._task_phases(task))

    def _train_task(self, task: int, ckpt: dict | None) -> None:
        """Task ``task``'s epochs (from the checkpoint's epoch when resuming), phase by phase (each with a fresh
        optimizer and schedule; the checkpoint's epoch counts across them), then the checkpoint before evaluation."""
        cfg, E = self.cfg, self._task_epochs(task)
        first_epoch = ckpt["next_epoch"] if ckpt is not None else 0
        view_configs = self._view_configs()
        if first_epoch == 0:
            self.regularizer.begin_task(self.method, task)
        if ckpt is not None:
            set_rng_state(ckpt["rng"])
        loader = self._loader(self.task_train[task], self.method.num_views, view_configs, seed=cfg.train.seed * 1000 + task)
        from .replay import with_replay  # regularizer.replay (ER, LUMP): the buffer batch joins or mixes into each batch
        loader = with_replay(loader, self.regularizer, cfg.train.seed * 1000 + task, self.steps[0], self._task_epochs(0),
                             cfg.optim.batch_size)
        probe_loader = None
        if cfg.train.online_probe == "full":
            probe_loader = self._loader(self.eval_train, 1, [view_configs[-1]], seed=cfg.train.seed * 1000 + 500 + task)
        task_start, task_images, start = time.perf_counter(), 0, 0
        for name, n in self._task_phases(task):
            if first_epoch < start + n:
                trainer = self._phase_trainer(task, name, ckpt if first_epoch > start else None)
                for epoch in range(max(first_epoch, start), start + n):
                    task_images += self._train_epoch(task, epoch, trainer, loader, probe_loader, (start, n, E))
            start += n
        elapsed = time.perf_counter() - task_start
        self.metrics["task_time_s"].append(elapsed)
        self.metrics["images_per_second"].append(task_images / max(elapsed, 1e-9))
        self.metrics.setdefault("world_size", []).append(self.dist.world_size)  # of each task's training
        self.metrics.setdefault("per_rank_batch_size", []).append(self.dist.local_batch(cfg.optim.batch_size))
        self._save(task, E, phase="evaluate")  # a kill during the evaluation keeps the task's training
        if self._stops["eval"] == task:
            raise _Interrupted()

    def _phase_trainer(self, task: int, phase: str, ckpt: dict | None) -> Trainer:
        """The phase's Trainer with a fresh optimizer (as the anchors, every task); ``ckpt``: resuming inside the
        phase (its optimizer and scaler state), else the phase starts here (``begin_phase``)."""
        cfg = self.cfg
        if ckpt is None:
            self.regularizer.begin_phase(self.method, task, phase)
        method, regularizer = self.regularizer.phase_modules(self.method, phase)
        groups = method.param_groups(cfg.optim) + regularizer.param_groups(cfg.optim)
        optimizer = build_optimizer(groups, cfg.optim)
        trainer = Trainer(method, regularizer, optimizer, cfg.train, self.device, log=self.log, dist=self.dist)
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            trainer.scaler.load_state_dict(ckpt["scaler"])
        return trainer

    def _train_epoch(self, task: int, epoch: int, trainer, loader, probe_loader, phase: tuple[int, int, int]) -> int:
        """One epoch: steps, TensorBoard scalars, progress, checkpoint. Returns the number of images trained on.
        ``phase``: (its first epoch in the task, its epochs, the task's epochs); schedules run over the phase."""
        cfg, T, steps = self.cfg, self.cfg.data.num_tasks, self.steps[task]
        start, n, E = phase
        set_lr(trainer.optimizer, epoch - start, n, cfg.optim)
        loader.set_epoch(epoch)
        probe_iter = _cycle(probe_loader, epoch) if probe_loader is not None else None
        self.progress.start_epoch(task, T, epoch, E)
        t0 = time.perf_counter()
        at = (epoch - start) * steps  # the step in the phase: the EMA tau schedule runs over the phase's steps
        means = trainer.train_epoch(loader, probe_iter, epoch, at, steps * n, steps,
                                    progress=self.progress.bar, on_log=self._scalar_logger(at))
        self.global_step += steps
        images = steps * cfg.optim.batch_size
        self.progress.end_epoch(task, T, epoch, E, steps, images, time.perf_counter() - t0, means)
        if epoch + 1 < E:
            self._save(task, epoch + 1, trainer.optimizer, trainer)
        self._epochs_run += 1
        if self._stops["epochs"] is not None and self._epochs_run >= self._stops["epochs"] and epoch + 1 < E:
            raise _Interrupted()
        return images

    def _scalar_logger(self, epoch_start: int):
        """The trainer's on_log: the logged terms as TensorBoard scalars at their global step."""
        def on_log(step_in_task, host, ips):
            if self.writer is None:
                return
            at = self.global_step + step_in_task - epoch_start  # global step of this log line
            for k, v in host.items():
                self.writer.add_scalar(f"train/{k}", v, at)
            self.writer.add_scalar("train/images_per_second", ips, at)
        return on_log

    def _finish_task(self, task: int) -> None:
        """Evaluate the trained task; save task{t}.pt, metrics.json, then the checkpoint of the next task."""
        cfg, T = self.cfg, self.cfg.data.num_tasks
        self._eval_label = f"evaluating task {task + 1}/{T}"
        self._evaluate(task, self.writer)
        self.save_file({"config": cfg.to_dict(), "task": task, "method": self.method.state_dict()}, self.out / f"task{task}.pt")
        self.dist.main_only(self._write_metrics)()
        self._save(task + 1, 0)
        self.progress.resume_training()
        stop = self._stops["epochs"]
        if stop is not None and self._epochs_run >= stop and task + 1 < T:
            raise _Interrupted()

    def _status(self, what: str) -> None:
        """The evaluation phase on display (the bar's description, else a log line)."""
        if self.progress is not None:
            self.progress.status(f"{getattr(self, '_eval_label', 'evaluating')}: {what}")

    def _steps_per_epoch(self, n: int) -> int:
        b = self.cfg.optim.batch_size
        if n < b:
            raise ConfigError(f"optim.batch_size={b} is invalid; allowed: <= the smallest task's {n} training images "
                              "(lower --optim.batch_size N or raise --data.train_fraction F)")
        steps = n // b  # drop_last: fixed shapes
        cap = self.cfg.train.steps_per_epoch
        return min(steps, cap) if cap else steps

    # ------------------------------------------------------------------------------------------------ eval
    def _protocol_rows(self, task: int, method=None, protocols=None) -> dict:
        """{protocol: [(per-task accuracies, whole-test accuracy) per fit]} of ``method``'s backbone after ``task``.

        The one path of every probe: the loop after each task (task -1: the random-init model) and ``fastpnr linear``
        / ``fastpnr knn`` on a saved model; fit r of task t is seeded ``evaluation.eval_seed(train.seed, t, r)``.
        ``protocols`` default: linear, knn, online, and official when ``eval.protocol`` is official.
        """
        cfg, method = self.cfg, method or self.method
        protocols = protocols or self._loop_protocols()
        extract = self._feature_extractor(method)
        self._status("features")
        test_x = extract(self.test_set, self.test_indices)
        test_y = torch.as_tensor(self.test_set.labels[self.test_indices], device=self.device)
        logits: dict[str, list] = {}
        train_idx = self._probe_train_indices()
        if {"linear", "knn"} & set(protocols):
            train_x = extract(self.train_set, train_idx)
            train_y = torch.as_tensor(self.train_set.labels[train_idx], device=self.device)
        if "linear" in protocols:
            self._status("linear probe")
            logits["linear"] = [self._fit_linear(train_x, train_y, task, r)(test_x) for r in range(cfg.eval.linear_seeds)]
        if "knn" in protocols:
            self._status("kNN")
            logits["knn"] = [ev.knn_predict(train_x, train_y, test_x, self.num_classes, k=cfg.eval.knn_k,
                                            temperature=cfg.eval.knn_temperature)]
        if "online" in protocols:
            with torch.no_grad():
                logits["online"] = [method.classifier(test_x)]
        if "momentum_online" in protocols:  # the anchors' momentum_val_acc1: the EMA backbone's own probe
            ema_x = self._feature_extractor(method, method.momentum_backbone)(self.test_set, self.test_indices)
            with torch.no_grad():
                logits["momentum_online"] = [method.momentum_classifier(ema_x)]
        if "official" in protocols:
            self._status("official linear protocol")
            heads = [self._fit_official(method, train_idx, task, r) for r in range(cfg.eval.official_seeds)]
            with torch.no_grad():
                logits["official"] = [head(test_x) for head in heads]
        rows = {name: [(ev.part_accuracies(lg, test_y, self.test_parts), ev.accuracy(lg, test_y)) for lg in fits]
                for name, fits in logits.items()}
        return self.dist.broadcast_object(rows)  # the probes run on every rank; all keep rank 0's numbers

    def _loop_protocols(self) -> tuple:
        # The online probes only where train.online_probe trains them (momentum_online: MoCo/BYOL's momentum classifier).
        probes = () if self.cfg.train.online_probe == "off" else ("online",) + (
            ("momentum_online",) if self.method.momentum_classifier is not None else ())
        return ("linear", "knn") + probes + (("official",) if self.cfg.eval.protocol == "official" else ())

    def _probe_train_indices(self) -> np.ndarray:
        """The labelled train images of the probes: eval.train_fraction, then eval.label_fraction per class."""
        return ev.stratified_subset(self.eval_train, self.train_set.labels, self.cfg.eval.label_fraction)

    def _feature_extractor(self, method, backbone=None):
        cfg = self.cfg
        size = self.crop_size if self.crop_size != self.image_size else None
        kw = dict(batch_size=cfg.eval.batch_size, device=self.device, mean=self.train_set.mean, std=self.train_set.std,
                  size=size, autocast_dtype=AUTOCAST_DTYPES[cfg.train.precision])
        # torchrun: whole eval batches dealt to the ranks, features gathered (each batch computed as in one process)
        return lambda ds, idx: self.dist.map_batches(
            lambda part: ev.extract_features(method.backbone if backbone is None else backbone, _images(ds), part, **kw),
            idx, cfg.eval.batch_size)

    def _fit_linear(self, train_x, train_y, task: int, repeat: int):
        e = self.cfg.eval
        return ev.linear_probe(train_x, train_y, self.num_classes, epochs=e.linear_epochs, lr=e.linear_lr,
                               batch_size=e.linear_batch_size, weight_decay=e.linear_weight_decay,
                               seed=ev.eval_seed(self.cfg.train.seed, task, repeat))

    def _fit_official(self, method, subset, task: int, repeat: int):
        """The official protocol's head (evaluation.train_official_head) on augmented batches of ``subset``."""
        e, cfg = self.cfg.eval, self.cfg
        seed = ev.eval_seed(cfg.train.seed, task, repeat)
        loader = self._official_loader(subset, seed % 2 ** 31)
        lr = e.official_lr or ev.OFFICIAL_LINEAR_LR.get(cfg.method.name)
        require(lr is not None, "eval.official_lr", e.official_lr, f"a value for method {cfg.method.name!r} (no anchor lr)")
        return ev.train_official_head(method.backbone, loader, method.feat_dim, self.num_classes, e.official_epochs, lr,
                                      e.official_momentum, seed, AUTOCAST_DTYPES[cfg.train.precision],
                                      progress=cfg.train.progress)

    def _official_loader(self, subset, seed: int):
        """Augmented batches for the official probe on the run's loader: DALI reads the encoded JPEG bytes, every
        other kind the decoded images resident on the device (the gpu loader: whole-batch augmentation)."""
        from loaders import Prefetcher, make_loader

        kind = "dali" if self.cfg.data.loader == "dali" else "gpu"
        source = self._encoded_train_set() if kind == "dali" else self.train_set
        view = ev.official_view(self.crop_size, self.train_set.mean, self.train_set.std)
        batch = min(self.cfg.eval.official_batch_size, len(subset))
        loader = make_loader(kind, source, batch_size=batch, num_views=1, device=self.device, seed=seed,
                             view_configs=[view], subset=np.asarray(subset))
        return Prefetcher(loader, self.device, ahead=None if self.cfg.data.prefetch else False)

    def _evaluate_random_init(self) -> None:
        """Accuracy of the untrained model (b_j), the reference of forward transfer (anchors §3.3)."""
        self._eval_label = "evaluating the random-init model"
        rows = {name: ev.summarize_fits(fits) for name, fits in self._protocol_rows(task=-1).items()}
        self.metrics["random_init_accuracy"] = {name: s["row"] for name, s in rows.items()}
        self.log(f"random-init {self.cfg.eval.protocol} test acc {rows[self.cfg.eval.protocol]['test_accuracy']:.2f}%")

    def _evaluate(self, task: int, writer) -> None:
        cfg, m = self.cfg, self.metrics
        t0 = time.perf_counter()
        for name, fits in self._protocol_rows(task).items():
            _record_fits(m, name, ev.summarize_fits(fits))
            if writer is not None:
                writer.add_scalar(f"eval/{name}_test_accuracy", m["test_accuracy_by_protocol"][name][-1], task)
                for j, a in enumerate(m["matrices"][name][-1]):
                    writer.add_scalar(f"eval/{name}_task{j}", a, task)
        proto = cfg.eval.protocol
        m["accuracy_matrix"] = m["matrices"][proto]
        m["accuracy_matrix_std"] = m["matrices_std"][proto]
        m["test_accuracy"] = m["test_accuracy_by_protocol"][proto]
        m.update(_summaries(m["accuracy_matrix"], m.get("random_init_accuracy", {}).get(proto)))
        m["num_corrupt"] = self.num_corrupt
        m["corrupt_images"] = self.corrupt_images
        m["eval_time_s"] = m.get("eval_time_s", []) + [time.perf_counter() - t0]
        row = ", ".join(f"{a:.1f}" for a in m["accuracy_matrix"][-1])
        others = " | ".join(f"{k} {v[-1]:.2f}%" for k, v in m["test_accuracy_by_protocol"].items() if k != proto)
        self.log(f"\nafter task {task}: {proto} test acc {m['test_accuracy'][-1]:.2f}% "
                 f"(± {m['test_accuracy_std_by_protocol'][proto][-1]:.2f}) | per task [{row}] | {others}")

    def _write_metrics(self) -> None:
        m = dict(self.metrics)
        m["protocol"] = self.cfg.eval.protocol
        m["num_tasks"] = self.cfg.data.num_tasks
        m["probe_fits"] = {name: len(v) for name, v in m.get("matrices_by_fit", {}).items()}
        _write_json(self.out / "metrics.json", m)
        with open(self.out / "accuracy_matrix.csv", "w") as f:
            T = self.cfg.data.num_tasks
            f.write("after_task," + ",".join(f"task{j}" for j in range(T)) + "\n")
            for i, row in enumerate(m["accuracy_matrix"]):
                f.write(f"{i}," + ",".join(f"{a:.4f}" for a in row) + "\n")
        std = m.get("accuracy_matrix_std")
        ev.save_heatmap(m["accuracy_matrix"], self.out / "accuracy_matrix.png",
                        title=f"{self.cfg.method.name}+{self.cfg.regularizer.name}: {self.cfg.eval.protocol} accuracy (%)",
                        std=std if std and any(v for r in std for v in r) else None)


def _record_fits(m: dict, name: str, s: dict) -> None:
    """Append one task's summarized probe fits of protocol ``name`` to the metrics (means, stds, values per fit)."""
    m["matrices"].setdefault(name, []).append(s["row"])
    m.setdefault("matrices_std", {}).setdefault(name, []).append(s["row_std"])
    m.setdefault("test_accuracy_by_protocol", {}).setdefault(name, []).append(s["test_accuracy"])
    m.setdefault("test_accuracy_std_by_protocol", {}).setdefault(name, []).append(s["test_accuracy_std"])
    per_fit = m.setdefault("matrices_by_fit", {}).setdefault(name, [[] for _ in s["rows"]])
    for matrix, row in zip(per_fit, s["rows"]):
        matrix.append(row)


def _summaries(matrix, random_init) -> dict:
    """A_T (also as average_accuracy, its old name), average incremental accuracy, forgetting, forward transfer."""
    cm = ev.ContinualMetrics(matrix)
    out = {"final_average_accuracy": cm.final_average_accuracy(), "average_accuracy": cm.final_average_accuracy(),
           "average_incremental_accuracy": cm.average_incremental_accuracy(), "forgetting": cm.forgetting()}
    if random_init is not None:
        out["forward_transfer"] = cm.forward_transfer(random_init)
    return out


class _Interrupted(Exception):
    pass


def _images(ds):
    if ds.images is not None:
        return ds.images
    return _LazyImages(ds)


class _LazyImages:
    """Index like an (N, H, W, 3) array, decoding on the fly (datasets kept as encoded bytes)."""

    def __init__(self, ds):
        self.ds = ds

    def __getitem__(self, idx):
        return np.stack([self.ds.image(int(i)) for i in np.atleast_1d(idx)])


def _cycle(loader, epoch):
    """Endless iterator over ``loader`` (the full-train online-probe batches), reshuffled on every pass."""
    k = 0
    while True:
        loader.set_epoch(epoch * 1000 + k)
        for views, labels, _ in loader:
            yield views[0], labels
        k += 1


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def _summary(m: dict) -> str:
    lines = ["accuracy matrix (%), rows: after task i, columns: task j"]
    for i, row in enumerate(m["accuracy_matrix"]):
        lines.append(f"  after {i}: " + "  ".join(f"{a:6.2f}" for a in row))
    fwt = f"  forward transfer {m['forward_transfer']:.2f}" if m.get("forward_transfer") is not None else ""
    lines.append(f"final average accuracy A_T {m['average_accuracy']:.2f}%  forgetting {m['forgetting']:.2f}{fwt}  "
                 f"final test accuracy {m['test_accuracy'][-1]:.2f}%")
    return "\n".join(lines)


def resume_run(path, overrides: dict | None = None, allow_config_change: bool = False, log=print) -> dict:
    """Continue the run in ``path`` (a run folder or its checkpoint.pt) from its last checkpoint, with the configuration
    it was started with plus ``overrides`` (dotted, as on the command line; see ``run_folder.RESUME_SAFE``)."""
    run_dir = resume_folder(path)
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    cfg = config_with_overrides(ckpt["config"], overrides or {})
    if ckpt["next_task"] >= cfg.data.num_tasks:
        raise FastPNRError(f"the run in {run_dir} is already complete ({cfg.data.num_tasks} tasks); see metrics.json")
    run = ContinualRun(cfg, run_dir, resume=True, log=log, allow_config_change=allow_config_change, checkpoint=ckpt)
    return run.fit()
