"""The stream scenario (``data.scenario stream``): online, task-free continual learning.

The training split is ordered as ``data.stream_of`` says and cut into ``data.num_tasks`` chunks of (nearly) equal
size, seen in order, ``optim.epochs`` passes over each chunk before the next one starts, and ``data.batch_passes``
optimizer steps on each minibatch (each with fresh views and, with replay, a fresh buffer batch; the CLA authors'
``--mb-passes``, 3 in their runs):

- class: the classes in the order of ``torch.randperm(num_classes, manual_seed(data.split_seed))`` (class-IL's order),
  each class's images shuffled (``data.data_split_seed``); the sequence cut into equal chunks. When the chunks divide
  the classes, chunk t holds exactly class-IL task t's classes; otherwise a class can straddle two chunks.
- data: class-IL's random_split (``scenarios.data_splits``): every chunk a random share of every class.
- domain: the domains in ``data.domain_order``, each domain's images shuffled, cut into equal chunks.

The loop sees the whole stream as ONE task of one epoch (``StreamLoader`` concatenates the chunks), so a strategy is
told of no boundary unless ``train.boundaries known`` (the loop then calls ``begin_task`` at each chunk's first step).
The chunks are the evaluation's parts: ``TaskData.test_parts[c]`` are chunk c's classes' (or domains') test images.
"""
from __future__ import annotations

import numpy as np
import torch

from fastpnr.errors import ConfigError, require
from .scenarios import DATA_SPLIT_SEED, DEFAULT_DOMAIN_ORDER, Task, _domain_order, check_classes, data_splits

REFRESHABLE = ("cassle", "pnr", "pfr")  # frozen-model strategies: refresh_every on a stream
STREAM_SEED_STRIDE = 1_000_003  # epoch ids of (chunk, pass) inside the loop's epoch: never collide for < 10^6 passes


def _ordered_then_cut(groups: list[np.ndarray], num_chunks: int, seed: int) -> list[np.ndarray]:
    """The groups' members in group order, each group shuffled (``seed``), cut into ``num_chunks`` contiguous chunks
    (``np.array_split``: the first ``N % C`` chunks one image longer)."""
    rng = np.random.default_rng(seed)
    sequence = np.concatenate([rng.permutation(np.asarray(g, np.int64)) for g in groups])
    require(num_chunks <= len(sequence), "data.num_tasks", num_chunks, f"at most the {len(sequence)} training images")
    return [np.asarray(c, np.int64) for c in np.array_split(sequence, num_chunks)]


def make_stream_chunks(stream_of: str, dataset, num_chunks: int, seed: int, domain_order=None, *,
                       data_seed: int = DATA_SPLIT_SEED) -> list[Task]:
    """The stream's chunks as ``scenarios.Task`` (train indices, and the classes or domains they hold)."""
    check_classes(dataset)
    labels = np.asarray(dataset.labels)
    if stream_of == "data":
        return [Task(t, idx) for t, idx in enumerate(data_splits(len(labels), num_chunks, data_seed))]
    if stream_of == "class":
        order = torch.randperm(len(dataset.classes), generator=torch.Generator().manual_seed(seed)).tolist()
        chunks = _ordered_then_cut([np.flatnonzero(labels == c) for c in order], num_chunks, data_seed)
        return [Task(t, idx, classes=[c for c in order if np.any(labels[idx] == c)]) for t, idx in enumerate(chunks)]
    require(stream_of == "domain", "data.stream_of", stream_of, ("class", "data", "domain"))
    order = list(domain_order) if domain_order is not None else list(
        DEFAULT_DOMAIN_ORDER.get(dataset.name, dataset.domains or []))
    domains = _domain_order(dataset, len(order), order)
    ids = np.asarray(dataset.domain_ids)
    chunks = _ordered_then_cut([np.flatnonzero(ids == dataset.domains.index(d)) for d in domains], num_chunks, data_seed)
    return [Task(t, idx, domains=[d for d in domains if np.any(ids[idx] == dataset.domains.index(d))])
            for t, idx in enumerate(chunks)]


def chunk_steps(chunk_sizes, batch_size: int, passes: int) -> list[int]:
    """Steps of each chunk: whole batches of it (drop_last) times its passes."""
    return [(n // batch_size) * passes for n in chunk_sizes]


def steps_per_batch(cfg) -> int:
    """How many steps each batch of a chunk gets: ``optim.epochs`` passes over the chunk x ``data.batch_passes``."""
    return cfg.optim.epochs * cfg.data.batch_passes


def stream_lr(step: int, base_lr: float, warmup_steps: int, start_lr: float) -> float:
    """The stream's learning rate at ``step``: linear from ``start_lr`` to ``base_lr`` over ``warmup_steps``, then
    ``base_lr`` to the end (the online papers' constant schedule; no decay: a stream has no known end)."""
    if step < warmup_steps:
        return start_lr + (base_lr - start_lr) * step / warmup_steps
    return base_lr


def set_stream_lr(optimizer, step: int, optim_cfg) -> None:
    """Every parameter group's lr at ``step`` of the stream (``static_lr`` groups keep theirs)."""
    for g in optimizer.param_groups:
        lr = g["base_lr"] if g.get("static_lr") else stream_lr(step, g["base_lr"], optim_cfg.warmup_steps,
                                                                  optim_cfg.warmup_start_lr)
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)  # in place: a captured graph holds this tensor's address
        else:
            g["lr"] = lr


def check_stream_config(cfg) -> None:
    """Checks of the stream's settings that need no data (``config.validate_combinations``, every run)."""
    reg, stream = cfg.regularizer, cfg.data.scenario == "stream"
    frozen_model = reg.name in REFRESHABLE
    # on a stream any strategy takes it (a study grid sets it for every cell); only REFRESHABLE ones use it
    require(reg.refresh_every is None or stream, "regularizer.refresh_every", reg.refresh_every,
            "None unless data.scenario is stream")
    require(cfg.data.batch_passes == 1 or stream, "data.batch_passes", cfg.data.batch_passes,
            "1 unless data.scenario is stream")
    if not stream:
        return
    require(cfg.data.loader == "gpu", "data.loader", cfg.data.loader,
            "gpu with data.scenario stream (the stream swaps the resident images' subset per chunk)")
    require(reg.name != "pocon", "regularizer", reg.name, "a strategy without phases on a stream (not pocon)")
    require(cfg.optim.warmup_epochs == 0, "optim.warmup_epochs", cfg.optim.warmup_epochs,
            "0 on a stream (its lr is constant after optim.warmup_steps)")
    if frozen_model and reg.refresh_every is None and cfg.train.boundaries == "unknown":
        raise ConfigError(f"regularizer.refresh_every=None is invalid for {reg.name} on a stream with unknown "
                          "boundaries (its frozen model would never be taken); allowed: an integer >= 1 (steps "
                          "between refreshes of the frozen model), or --train.boundaries known")


def check_stream_length(total_steps: int, every_steps: int) -> None:
    """A stream must reach its first evaluation point."""
    require(total_steps >= every_steps, "eval.every_steps", every_steps,
            f"<= the stream's {total_steps} steps (lower --eval.every_steps or lengthen the stream)")


class StreamLoader:
    """The loop's one task: the chunks' batches in order, ``passes`` shuffled passes over each, no pause between
    (each batch ``loader.batch_passes`` times in a row).

    ``loader``: a ``GpuResidentLoader`` over the stream's images (its ``subset`` is swapped per chunk). Chunk c's
    pass p is the inner loader's epoch ``(epoch * STREAM_SEED_STRIDE) + c * passes + p``: the batches are a
    function of (seed, loop epoch, chunk, pass), so a resumed run replays them exactly. ``chunk_of_step`` says which
    chunk a step is in (the evaluation and ``train.boundaries known``)."""

    def __init__(self, loader, chunks: list[np.ndarray], passes: int):
        self.loader, self.passes = loader, int(passes)
        device = loader.subset.device
        self.chunks = [torch.as_tensor(np.asarray(c, np.int64), device=device) for c in chunks]
        self.per_chunk = chunk_steps([len(c) for c in chunks], loader.batch_size,
                                     self.passes * getattr(loader, "batch_passes", 1))
        self.starts = np.concatenate([[0], np.cumsum(self.per_chunk)]).astype(np.int64)
        self.epoch = 0

    def __getattr__(self, name):
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def chunk_of_step(self, step: int) -> int:
        """The chunk that step ``step`` (0-based) trains on."""
        return int(np.searchsorted(self.starts, step, side="right") - 1)

    def __iter__(self):
        for c, chunk in enumerate(self.chunks):
            self.loader.subset = chunk
            for p in range(self.passes):
                self.loader.set_epoch(self.epoch * STREAM_SEED_STRIDE + c * self.passes + p)
                yield from self.loader
