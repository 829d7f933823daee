"""The run's data: the train and test datasets, the tasks' training images, the evaluation subsets, the loaders.

``TaskData(cfg, out)`` loads both splits, makes the scenario's tasks and the seeded subsamples, and (with ``out``)
records them in ``tasks.json`` and ``tasks_indices.npz``. Everything after reads from it: the loop trains on
``loader(task_train[t], ...)``, the evaluator (``fastpnr.eval.protocols``) extracts features of ``test_set[test_indices]``
and fits probes on ``probe_train_indices()``, scored per task on ``test_parts[t]`` (positions inside
``test_indices``). It holds no model and no training state; ``fastpnr linear`` / ``knn`` build it the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fastpnr.system import distributed
from fastpnr.errors import ConfigError
from fastpnr.system.atomic import atomic_file, write_json
from fastpnr.system.runtime import resolve_device
from .scenarios import stratified_subset

TASK_INDICES = "tasks_indices.npz"  # the split itself: task{t}, test, test_task{t}, eval_train

CORRUPT_LOG_MAX = 20  # corrupt images named one per line; the rest are counted (all are in tasks.json, metrics.json)


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
    with atomic_file(path) as f:  # a file object: np.savez appends no ".npz"
        np.savez(f, **arrays)


def _data_note(datasets) -> str:
    """" skipped={...}" counts for the run's "data:" line (nothing when nothing was skipped)."""
    counts: dict[str, int] = {}
    for ds in datasets:
        for kind, n in ds.skipped.counts().items():
            if n:
                counts[kind] = counts.get(kind, 0) + n
    return f" skipped={counts}" if counts else ""


def _log_skipped(log, ds) -> None:
    """One line for what the listing of ``ds`` skipped, one per corrupt image skipped (each once)."""
    if ds.skipped.total():
        log(f"data: skipped in {ds.name}/{ds.split}: {ds.skipped.describe()} (names in tasks.json)")
    for member, reason in ds.corrupt[:CORRUPT_LOG_MAX]:
        log(f"data: skipped corrupt image {member}: {reason}")
    if len(ds.corrupt) > CORRUPT_LOG_MAX:
        log(f"data: ... and {len(ds.corrupt) - CORRUPT_LOG_MAX} more corrupt images in {ds.name}/{ds.split} "
            f"(all named in tasks.json and metrics.json)")


def image_array(ds):
    """``ds``'s images as an (N, H, W, 3) array, or an object indexed like one that decodes on the fly (datasets
    kept as encoded bytes)."""
    return ds.images if ds.images is not None else _LazyImages(ds)


def cycle(loader, epoch: int):
    """Endless iterator over ``loader``'s (first view, labels) (the full-train online-probe batches), reshuffled on
    every pass: pass k of ``epoch`` is the loader's epoch ``epoch * 1000 + k``."""
    k = 0
    while True:
        loader.set_epoch(epoch * 1000 + k)
        for views, labels, _ in loader:
            yield views[0], labels
        k += 1


class _LazyImages:
    def __init__(self, ds):
        self.ds = ds

    def __getitem__(self, idx):
        return np.stack([self.ds.image(int(i)) for i in np.atleast_1d(idx)])


class TaskData:
    """The datasets and the split of one run (see the module docstring); loaded on construction."""

    def __init__(self, cfg, out: str | os.PathLike | None = None, dist=None, device=None, log=print):
        """``out``: the run folder, where tasks.json and tasks_indices.npz go (None: write nothing, the offline tools);
        ``dist``: the process group (rank 0 writes, ``.beton`` files are written by rank 0 first); ``device``: where
        the loaders deliver batches (default ``train.device``)."""
        from . import load_dataset
        from .registry import get_spec
        from .scenarios import describe_tasks, make_tasks, task_test_indices

        self.cfg, self.out, self.log = cfg, Path(out) if out is not None else None, log
        self.dist = dist if dist is not None else distributed.SINGLE
        self.device = device if device is not None else resolve_device(cfg.train.device)
        self._encoded_train = None
        d = cfg.data
        spec = get_spec(d.dataset)
        eval_split = spec.splits[-1] if spec.splits else "val"
        kw = dict(image_size=d.image_size, resize=d.resize, skip_corrupt=d.skip_corrupt, cache_dir=d.cache_dir, progress=cfg.train.progress,
                  download=d.download)
        self.train_set = load_dataset(d.dataset, "train", d.data_dir, **kw)
        self.test_set = load_dataset(d.dataset, eval_split, d.data_dir, **kw)
        self.num_corrupt = int(self.train_set.num_corrupt + self.test_set.num_corrupt)
        self.corrupt_images = self.train_set.corrupt_images + self.test_set.corrupt_images  # metrics.json
        self.stream = d.scenario == "stream"  # the chunks are the tasks of the split; the loop trains one (stream.py)
        if self.stream:
            from .stream import make_stream_chunks

            self.tasks = make_stream_chunks(d.stream_of, self.train_set, d.num_tasks, seed=d.split_seed,
                                            data_seed=d.data_split_seed, domain_order=d.domain_order)
        else:
            self.tasks = make_tasks(d.scenario, self.train_set, d.num_tasks, seed=d.split_seed,
                                    data_seed=d.data_split_seed, domain_order=d.domain_order)
        self.seeds = seeds = _split_seeds(d, len(self.tasks))  # recorded in tasks.json
        self.task_train = [_subsample(t.train_indices, d.train_fraction, s)
                           for t, s in zip(self.tasks, seeds["train_subsample"])]
        test_all = _subsample(np.arange(len(self.test_set)), d.test_fraction, seeds["test_subsample"])
        parts = task_test_indices(d.stream_of if self.stream else d.scenario, self.tasks, self.test_set)
        # Positions inside ``test_all`` of each task's test images.
        pos = {int(i): k for k, i in enumerate(test_all)}
        self.test_indices = test_all
        self.test_parts = [np.array([pos[int(i)] for i in p if int(i) in pos], dtype=np.int64) for p in parts]
        self.eval_train = _subsample(np.arange(len(self.train_set)), cfg.eval.train_fraction,
                                     seeds["eval_train_subsample"])
        self.num_classes = len(self.train_set.classes)
        if self.out is not None:
            self.dist.main_only(write_json)(self.out / "tasks.json", self._describe(describe_tasks(self.tasks, self.train_set)))
            self.dist.main_only(_write_task_indices)(self.out / TASK_INDICES, self.task_train, test_all, self.test_parts,
                                                      self.eval_train)
        self.data_note = _data_note([self.train_set, self.test_set])
        for ds in (self.train_set, self.test_set):
            _log_skipped(self.log, ds)
        self.image_size = self.train_set.images.shape[1] if self.train_set.images is not None else (d.image_size or spec.native_size)
        self.crop_size = d.crop_size or self.image_size

    def _describe(self, desc: dict) -> dict:
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

    def summary(self) -> str:
        """The run's "data:" line: sizes, images per task, corrupt and skipped files."""
        return (f"{self.cfg.data.dataset} train={len(self.train_set)} test={len(self.test_indices)} "
                f"tasks={[len(t) for t in self.task_train]} corrupt={self.num_corrupt}{self.data_note}")

    def loop_tasks(self) -> int:
        """The tasks the loop trains: the scenario's, or one for the stream (its chunks in one loader)."""
        return 1 if self.stream else len(self.task_train)

    def stream_steps(self) -> int:
        """The stream's steps: every chunk's whole batches times optim.epochs times data.batch_passes, at most
        ``train.steps_per_epoch``."""
        from .stream import chunk_steps, steps_per_batch

        self.steps_per_epoch(int(np.argmin([len(t) for t in self.task_train])), cap=False)  # the smallest chunk's check
        total = sum(chunk_steps([len(t) for t in self.task_train], self.cfg.optim.batch_size, steps_per_batch(self.cfg)))
        cap = self.cfg.train.steps_per_epoch
        return min(total, cap) if cap else total

    def steps_per_epoch(self, task: int, cap: bool = True) -> int:
        """Steps of an epoch of ``task``: whole batches (drop_last: fixed shapes), at most ``train.steps_per_epoch``
        (the stream: its one task's steps, ``stream_steps``)."""
        if self.stream and cap:
            return self.stream_steps()
        n, b = len(self.task_train[task]), self.cfg.optim.batch_size
        if n < b:
            raise ConfigError(f"optim.batch_size={b} is invalid; allowed: <= the smallest task's {n} training images "
                              "(lower --optim.batch_size N or raise --data.train_fraction F)")
        steps = n // b
        limit = self.cfg.train.steps_per_epoch if cap else None
        return min(steps, limit) if limit else steps

    def probe_train_indices(self) -> np.ndarray:
        """The labelled train images of the probes: eval.train_fraction, then eval.label_fraction per class."""
        return stratified_subset(self.eval_train, self.train_set.labels, self.cfg.eval.label_fraction)

    # ------------------------------------------------------------------------------------------------ loaders
    def view_configs(self, num_views: int) -> list:
        """The augmentation of each of a method's ``num_views`` views (data.min_scale, blur, solarization)."""
        from loaders import ViewConfig

        d = self.cfg.data
        mean, std = self.train_set.mean, self.train_set.std
        views = []
        for v in range(num_views):
            pick = lambda probs: probs[min(v % 2, len(probs) - 1)]  # asymmetric per-view recipes (BYOL-style)
            views.append(ViewConfig(size=self.crop_size, crop_scale=(d.min_scale, 1.0), blur_prob=pick(d.blur_prob),
                                    solarize_prob=pick(d.solarize_prob), mean=mean, std=std))
        return views

    def loader(self, indices, num_views, view_configs, seed, shuffle=True, drop_last=True, batch_passes=1):
        """Training batches of ``indices`` (``optim.batch_size``, this rank's shard under torchrun) on the run's
        ``data.loader``, wrapped in ``loaders.Prefetcher``: on CUDA the next batch is produced on a side stream while
        the current step runs (values unchanged; ``data.prefetch false`` turns it off); elsewhere the wrapper is the
        loader itself."""
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
            source = self.encoded_train_set()
        elif kind == "torchvision":
            extra = {"num_workers": self.cfg.data.num_workers}
        if batch_passes != 1:  # the stream's minibatch passes (the gpu loader: check_stream_config)
            extra["batch_passes"] = batch_passes
        batch = self.cfg.optim.batch_size
        loader = make_loader(kind, source, batch_size=batch, num_views=num_views,
                             device=self.device, seed=seed, shuffle=shuffle, drop_last=drop_last,
                             view_configs=view_configs, subset=indices,
                             shard=self.dist.shard(batch) if self.dist.enabled else None, **extra)
        return Prefetcher(loader, self.device, ahead=None if self.cfg.data.prefetch else False)

    def task_loaders(self, task: int, num_views: int) -> tuple:
        """(training loader, online-probe loader or None) of task ``task``, seeded by ``task_seed``: the task's images
        in a method's ``num_views`` views; the probe's (``train.online_probe full``) is eval_train in the last view."""
        views, seed = self.view_configs(num_views), self.task_seed(task)
        if self.stream:  # the loop's one task: every chunk in order (the Prefetcher wraps the whole stream)
            from loaders import Prefetcher

            from .stream import StreamLoader

            inner = self.loader(np.concatenate(self.task_train), num_views, views, seed=seed,
                                batch_passes=self.cfg.data.batch_passes).loader
            loader = Prefetcher(StreamLoader(inner, self.task_train, self.cfg.optim.epochs), self.device,
                                ahead=None if self.cfg.data.prefetch else False)
        else:
            loader = self.loader(self.task_train[task], num_views, views, seed=seed)
        if self.cfg.train.online_probe != "full":
            return loader, None
        return loader, self.loader(self.eval_train, 1, [views[-1]], seed=seed + 500)

    def task_seed(self, task: int) -> int:
        """The seed of task ``task``'s draws (its loaders, its replay batches): ``train.seed`` * 1000 + task."""
        return self.cfg.train.seed * 1000 + task

    def official_loader(self, subset, seed: int):
        """Augmented batches for the official probe on the run's loader: DALI reads the encoded JPEG bytes, every
        other kind the decoded images resident on the device (the gpu loader: whole-batch augmentation)."""
        from loaders import Prefetcher, make_loader

        kind = "dali" if self.cfg.data.loader == "dali" else "gpu"
        source = self.encoded_train_set() if kind == "dali" else self.train_set
        view = official_view(self.crop_size, self.train_set.mean, self.train_set.std)
        batch = min(self.cfg.eval.official_batch_size, len(subset))
        loader = make_loader(kind, source, batch_size=batch, num_views=1, device=self.device, seed=seed,
                             view_configs=[view], subset=np.asarray(subset))
        return Prefetcher(loader, self.device, ahead=None if self.cfg.data.prefetch else False)

    def _train_beton(self) -> str:
        from loaders.ffcv_ops import write_beton

        from . import cache_root

        d = self.cfg.data
        size = "native" if not d.image_size else f"{d.image_size}" + ("" if d.resize == "stretch" else f"-{d.resize}")
        path = cache_root(d.cache_dir) / "betons" / f"{d.dataset}-train-{size}-{len(self.train_set)}.beton"
        with self.dist.main_first():
            if not path.exists():
                self.log(f"writing {path} (once) for the ffcv loader")
                path.parent.mkdir(parents=True, exist_ok=True)
                write_beton(self.train_set, path, num_workers=max(1, self.cfg.data.num_workers))
        return str(path)

    def encoded_train_set(self):
        """The train split kept as encoded JPEG bytes (DALI decodes them itself); loaded once, on first use."""
        if self._encoded_train is None:
            from . import load_dataset

            d = self.cfg.data
            self._encoded_train = load_dataset(d.dataset, "train", d.data_dir, decode=False, skip_corrupt=d.skip_corrupt,
                                               cache_dir=d.cache_dir, download=d.download)
        return self._encoded_train


def official_view(size: int, mean, std):
    """The training augmentation: random-resized-crop (0.08-1, bicubic) + horizontal flip, nothing else."""
    from loaders import ViewConfig

    return ViewConfig(size=size, crop_scale=(0.08, 1.0), interpolation="bicubic", brightness=0.0, contrast=0.0,
                      saturation=0.0, hue=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0,
                      flip_prob=0.5, mean=tuple(mean), std=tuple(std))
