"""Replay in the loop: ER's extra buffer batch and LUMP's mixed views, from a reservoir of dataset indices.

``with_replay(loader, regularizer, ...)`` wraps a task's loader when ``regularizer.replay`` is set. For each batch
of the wrapped loader it

1. draws ``R = regularizer.replay_batch`` distinct buffered indices (once the buffer holds R; before that the batch
   passes unchanged: plain SSL, as UCL's ``Mixup.observe`` on an empty buffer, models/mixup.py L18-29);
2. gathers those images from the loader's device-resident uint8 images (``GpuResidentLoader.images``: the buffer
   holds indices, never image copies) and augments them as a batch with the loader's view recipes
   (``gpu_aug.augment_batch``; this rank's rows, with the global batch's draws: ``gpu_aug.draw_rows``);
3. ER: appends them to every view (and their labels to the labels); LUMP: replaces every view v by
   ``lam * x_cur_v + (1 - lam) * x_buf_v`` with one ``lam ~ Beta(alpha, alpha)`` per batch (mixup.py L46-49);
4. after the step (when the next batch is asked for) streams the step's *global* batch indices (``dist.gather``)
   through the reservoir (UCL adds ``notaug_inputs`` after ``opt.step()``, mixup.py L54-60), so every rank holds the
   same buffer. With ``data.batch_passes`` k > 1 (the stream) a batch comes k times in a row, each with a fresh
   replay draw, and enters the buffer after its last pass only (the CLA authors' ``after_mb_passes``).

No per-sample Python, no host sync: the buffer's fill level is a host counter. Every draw comes from generators
seeded by (loader seed, epoch, stream), and checkpoints fall on epoch boundaries, so a resumed run draws what the
uninterrupted one drew; the buffer's slots and counter are in the regularizer's state_dict.
"""
from __future__ import annotations

import numpy as np
import torch

from fastpnr.errors import ConfigError, require

RESERVOIR, REPLAY_PICK, REPLAY_AUGMENT, MIX = 2, 3, 4, 5  # random streams (the loaders use 0 and 1)


def replay_batch_size(reg_cfg, batch_size: int) -> int:
    """R: ``regularizer.replay_batch``, or the batch size when None (UCL draws ``train.batch_size`` images)."""
    return reg_cfg.replay_batch or batch_size


def mix_views(current: torch.Tensor, replayed: torch.Tensor, lam: float) -> torch.Tensor:
    """LUMP's mixup of one view: ``lam * current + (1 - lam) * replayed``, row i with row i (same shapes).

    On normalized views this equals mixing the [0, 1] images and normalizing (the weights sum to 1)."""
    require(current.shape == replayed.shape, "replayed.shape", tuple(replayed.shape), f"{tuple(current.shape)} (the current view's)")
    return lam * current + (1.0 - lam) * replayed


def check_replay_config(cfg) -> None:
    """Checks across sections for ``regularizer.replay`` (run by ``config.validate_combinations``)."""
    reg = cfg.regularizer
    if reg.replay == "none":
        return
    batch = cfg.optim.batch_size
    r = replay_batch_size(reg, batch)
    require(cfg.data.loader == "gpu", "data.loader", cfg.data.loader,
            f"gpu with regularizer.replay {reg.replay} (the buffer indexes the images resident on the device)")
    require(r <= reg.buffer_size, "regularizer.replay_batch", r,
            f"<= regularizer.buffer_size ({reg.buffer_size}): a step draws distinct buffered images")
    if reg.replay == "lump":
        require(r == batch, "regularizer.replay_batch", r,
                f"None or optim.batch_size ({batch}) with LUMP (each current image is mixed with one buffered image)")
    if reg.replay == "er":
        for section, field in (("method", "queue_size"), ("regularizer", "frozen_queue_size")):
            size = getattr(getattr(cfg, section), field, None)
            if size is not None and size < batch + r:
                raise ConfigError(f"{section}.{field}={size} is invalid with ER; allowed: >= optim.batch_size + "
                                  f"regularizer.replay_batch = {batch + r} (a step enqueues the current and replayed keys)")


def check_buffer_fills(buffer_size: int, task0_images: int, detail: str) -> None:
    """The buffer must be full by the end of task 0: ``buffer_size`` at most the images task 0 streams."""
    require(buffer_size <= task0_images, "regularizer.buffer_size", buffer_size,
            f"<= {task0_images}, the images task 0 streams ({detail}), so that the buffer is full when task 1 starts")


def with_replay(loader, regularizer, seed: int, task0_steps: int, epochs: int, batch_size: int,
                per_step: bool = False, skip: int = 0):
    """``loader`` itself without replay; else a ``ReplayLoader`` over it (checks the buffer fills during task 0).
    ``per_step`` (the stream): draws seeded per step, resumable inside the epoch from step ``skip``."""
    cfg = regularizer.cfg
    if cfg.replay == "none":
        return loader
    if per_step:
        passes = getattr(loader, "batch_passes", 1)  # a batch enters the buffer once, after its last pass
        task0_steps //= passes
        require(cfg.buffer_size <= task0_steps * batch_size, "regularizer.buffer_size", cfg.buffer_size,
                f"<= {task0_steps * batch_size}, the images the stream holds ({task0_steps} batches x batch "
                f"{batch_size}), so that the buffer fills")
    else:
        check_buffer_fills(cfg.buffer_size, task0_steps * batch_size * epochs,
                           f"{task0_steps} steps x batch {batch_size} x {epochs} epochs")
    return ReplayLoader(loader, regularizer.replay_buffer, cfg.replay, replay_batch_size(cfg, batch_size), seed,
                        regularizer.dist, cfg.mix_alpha, plain_first_view=cfg.lump_first_view == "plain",
                        per_step=per_step, skip=skip)


def plain_view(view):
    """The authors' re-augmentation of a replayed image's first view in LUMP (UCL ``Mixup.observe`` draws
    ``buffer.get_data(..., transform=self.transform)``, models/mixup.py L44-45; ``self.transform`` is the dataset's
    ``get_transform``, datasets/seq_cifar10.py L57-64: RandomResizedCrop(scale (0.08, 1), ratio (3/4, 4/3), bicubic),
    RandomHorizontalFlip, Normalize): no colour jitter, grayscale, blur or solarization. Size and normalization are
    the run's view's."""
    from dataclasses import replace

    return replace(view, crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), interpolation="bicubic", jitter_prob=0.0,
                   grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0, flip_prob=0.5)


class ReplayLoader:
    """A loader of the contract (``len``, ``set_epoch``, iterating ``(views, labels, indices)``) that adds replay.

    ``loader``: the task's gpu loader (or its ``Prefetcher``): its ``images`` (N, 3, H, W) uint8 on the device,
    ``labels``, ``view_configs`` and ``seed``. ``mode``: "er" or "lump". The yielded indices are the current batch's.
    """

    def __init__(self, loader, buffer, mode: str, replay_batch: int, seed: int, dist, alpha: float,
                 plain_first_view: bool = False, per_step: bool = False, skip: int = 0):
        from loaders.gpu_aug import augment_batch, draw_rows

        if getattr(loader, "resident", None) != "device":
            raise ConfigError(f"regularizer.replay={mode!r} needs the training images resident on the device; these "
                              "exceed half its free memory (the gpu loader keeps them on the host): lower "
                              "data.image_size, or use regularizer.replay none")
        self.loader, self.buffer, self.mode, self.replay_batch = loader, buffer, mode, replay_batch
        self.seed, self.dist, self.alpha = int(seed), dist, float(alpha)
        self.shard = dist.shard(replay_batch) if dist.enabled else None  # one line when the world size does not divide R
        self._augment, self._draw_rows = augment_batch, draw_rows
        # the replayed images' recipes: the loader's, or LUMP's authors' plain transform for the first view
        self.replay_recipes = list(loader.view_configs)
        if plain_first_view:
            self.replay_recipes[0] = plain_view(self.replay_recipes[0])
        self.epoch = 0
        # per_step: every step's draws from generators seeded by (seed, epoch, stream, step), so that a run resumed
        # at step ``skip`` of an epoch draws what the uninterrupted run drew; the first ``skip`` batches pass
        # untouched (their replay is in the checkpointed buffer), but the last one's entry into the buffer, which
        # the uninterrupted run made after its checkpoint
        self.per_step, self.skip = per_step, int(skip)
        self.batch_passes = getattr(loader, "batch_passes", 1)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)
        self.epoch = epoch

    def replayed_views(self, pick_gen, augment_gen):
        """(views, labels) of R buffered images (this rank's rows), augmented with the loader's view recipes."""
        rows = self.buffer.sample(self.replay_batch, pick_gen)
        if self.shard is not None:
            rows = rows[self.shard]
        x = self.loader.images[rows].float().div_(255.0)
        with self._draw_rows(self.replay_batch, self.shard):  # the global replay batch's augmentation draws
            views = [self._augment(x, cfg, augment_gen) for cfg in self.replay_recipes]
        return views, self.loader.labels[rows]

    def _draws(self, step: int | None):
        """(reservoir, pick, augment generators, host rng of lam): of the epoch, or of its step ``step``."""
        from loaders.seeding import epoch_seed

        device = self.loader.images.device
        key = (self.epoch,) if step is None else (self.epoch, step)
        gens = [torch.Generator(device=device).manual_seed(epoch_seed(self.seed, key[0], s, *key[1:]))
                for s in (RESERVOIR, REPLAY_PICK, REPLAY_AUGMENT)]
        return (*gens, np.random.default_rng(epoch_seed(self.seed, key[0], MIX, *key[1:])))  # lam: no device read

    def __iter__(self):
        skip, self.skip = self.skip, 0  # a resume's skip applies to its first epoch only
        reservoir_gen, pick_gen, augment_gen, mix_rng = self._draws(None)
        for step, (views, labels, indices) in enumerate(self.loader):
            if self.per_step:
                reservoir_gen, pick_gen, augment_gen, mix_rng = self._draws(step)
                if step < skip:
                    yield views, labels, indices
                    if step == skip - 1:
                        self._after_step(step, indices, reservoir_gen)
                    continue
            if self.buffer.filled() >= self.replay_batch:
                replayed, replayed_labels = self.replayed_views(pick_gen, augment_gen)
                if self.mode == "er":
                    views = [torch.cat([v, r]).contiguous(memory_format=torch.channels_last)
                             for v, r in zip(views, replayed)]
                    labels = torch.cat([labels, replayed_labels])
                else:
                    lam = float(mix_rng.beta(self.alpha, self.alpha))
                    views = [mix_views(v, r, lam) for v, r in zip(views, replayed)]
            yield views, labels, indices
            # Runs when the next batch is asked for, i.e. after this batch's step: a batch the epoch loop fetches
            # but does not train on (train.steps_per_epoch) never enters the buffer.
            self._after_step(step, indices, reservoir_gen)

    def _after_step(self, step: int, indices, reservoir_gen) -> None:
        """The step's batch enters the buffer after its last pass; the passes before only end (``between_passes``)."""
        if (step + 1) % self.batch_passes == 0:
            self.buffer.add(self.dist.gather(indices), reservoir_gen)
        else:
            self.buffer.between_passes()
