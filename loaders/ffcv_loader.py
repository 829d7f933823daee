"""FFCV `.beton` loader: FFCV reads, decodes (and optionally crops) with its numba pipelines, `gpu_aug` does the rest.

Write the file with `fastpnr to_beton --dataset NAME --split SPLIT --out FILE.beton` (scripts/to_beton.py), then
`make_loader("ffcv", "FILE.beton", ...)`. Two ways to get the views (`crop=`):

- "device" (default): one FFCV pipeline decodes each image once (SimpleRGBImageDecoder → ToTensor → ToDevice →
  ToTorchImage(channels_last)); every view is then `gpu_aug.augment_batch` on the device (torchvision-semantics random
  resized crop + flip, jitter, gray, blur, solarize, normalize). Needs one image size in the file. Batches are an
  exact function of (seed, epoch).
- "decoder": one FFCV pipeline per view, all reading the "image" field (`PipelineSpec(source="image")`, which 1.0.2
  supports): RandomResizedCropRGBImageDecoder(size, scale, ratio) + RandomHorizontalFlip on the CPU, then ToTensor →
  ToDevice → ToTorchImage(channels_last); jitter/gray/blur/solarize/normalize follow on the device. FFCV resizes the
  crop with OpenCV INTER_AREA (not the ViewConfig's interpolation) and draws crops and flips from numba's per-thread
  generator, which no seed reaches: the order, labels and the device ops are (seed, epoch)-deterministic, the crops
  and flips are not. Works with images of mixed sizes.

Order (`order=`): "random" is FFCV's Random (`np.random.default_rng(s + epoch).permutation(subset)`) with
s = a 31-bit seed mixed from `seed`; "quasi_random" is FFCV's page-local shuffle (needs `os_cache=False`; its page
table, which FFCV reshuffles in place, is restored before each epoch);
shuffle=False means "sequential" (the subset in the given order). `set_epoch(e)` picks FFCV's epoch, so the order of
epoch e is a function of (seed, e) for every order. FFCV's numba code compiles on the first epoch of each loader
(about 2 s for crop="device", 10-20 s per view for crop="decoder" on 2 CPU cores), and FFCV sets
`torch.set_num_threads(num_workers)` whenever it starts an epoch.

Sharded (`shard=`, torchrun): each rank's FFCV loader reads and decodes only its rows of every global batch (FFCV's
order of the whole subset, cut into global batches, keeps the rank's columns), and crop="device" draws the augmentation
of the whole global batch and keeps its rows (`gpu_aug.draw_rows`): the ranks' batches, concatenated, are one
process's batches. FFCV's own `distributed=True` is not used: it deals samples round-robin, another order.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fastpnr.errors import DataError, require

from .config import CIFAR_MEAN, CIFAR_STD, CROP_MODES, ORDERS, ViewConfig
from .ffcv_ops import check_schema, import_ffcv
from .gpu_aug import after_crop, augment_batch, draw_rows
from .gpu_resident import resolve_subset, resolve_views
from .seeding import AUGMENTATION, PERMUTATION, EpochBatches, epoch_generator, epoch_seed
from .shard import check_shard, rows_of_global_batches


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class FfcvLoader(EpochBatches):
    """Iterable of `(views, labels, indices)` over a fastpnr `.beton` (see the module docstring).

    source: path of a `.beton` written by `fastpnr to_beton` (fields image, label, index[, domain]).
    subset: dataset indices of the task (None = all); passed to FFCV as `indices=`.
    view_configs: ViewConfigs as for every loader; the default is `ViewConfig(size=<stored height>, mean, std)` with
    `mean`/`std` (default CIFAR statistics: the file does not store them).
    crop: "device" or "decoder" (module docstring). order, os_cache, batches_ahead, num_workers: FFCV's options
    (num_workers = numba threads; default all cores available to the process; at most numba's thread count).
    shard: this rank's rows of every global batch of `batch_size` (module docstring); `len()` counts global batches.
    """

    def __init__(self, source, batch_size: int, num_views: int, device, seed: int, shuffle: bool = True,
                 drop_last: bool = True, view_configs=None, subset=None, *, crop: str = "device",
                 num_workers: int | None = None, order: str = "random", os_cache: bool = True, batches_ahead: int = 3,
                 mean=CIFAR_MEAN, std=CIFAR_STD, shard: slice | None = None):
        require(isinstance(source, (str, os.PathLike)), "source", _describe(source),
                "a .beton path (write one with: fastpnr to_beton --dataset NAME --split SPLIT --out FILE.beton)")
        require(isinstance(seed, (int, np.integer)) and seed >= 0, "seed", seed, "an int >= 0")
        require(crop in CROP_MODES, "crop", crop, CROP_MODES)
        require(order in ORDERS, "order", order, ORDERS)
        require(shuffle or order in ("random", "sequential"), "order", order,
                "'sequential' (or the default) when shuffle=False")
        num_workers = _default_workers() if num_workers is None else num_workers
        require(isinstance(num_workers, int) and num_workers >= 1, "num_workers", num_workers, "an int >= 1")
        require(isinstance(batches_ahead, int) and batches_ahead >= 1, "batches_ahead", batches_ahead, "an int >= 1")
        require(order != "quasi_random" or not os_cache, "os_cache", os_cache, "False with order='quasi_random'")
        import_ffcv()
        import numba
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.pipeline import PipelineSpec
        from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

        self.path = Path(source)
        reader, fields = check_schema(self.path)
        meta = reader.metadata[f"f{list(fields).index('image')}"]
        heights, widths = meta["height"], meta["width"]
        n = int(reader.num_samples)
        self.device = torch.device(device)
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, int(seed)
        self.subset = resolve_subset(subset, n, batch_size, drop_last)
        self.shard = check_shard(shard, batch_size, drop_last)
        rows = batch_size if self.shard is None else self.shard.stop - self.shard.start
        default = ViewConfig(size=int(heights.max()), mean=tuple(mean), std=tuple(std))
        self.view_configs = resolve_views(view_configs, num_views, default)
        self.num_views, self.crop, self.epoch = num_views, crop, 0
        if crop == "device":
            require(heights.min() == heights.max() and widths.min() == widths.max(), "crop", crop,
                    f"'decoder' for {self.path.name}: its images are not all one size (or rewrite it with "
                    f"to_beton --image-size)")
        self.order = "sequential" if not shuffle else order
        # FFCV's workers are numba threads, at most NUMBA_NUM_THREADS (the machine's cores by default): more is an
        # error in numba, so data.num_workers 4 on a 2-core machine gets 2
        self.num_workers = min(num_workers, numba.config.NUMBA_NUM_THREADS)

        dev = self.device

        def to_device():
            return [ToTensor(), ToDevice(dev, non_blocking=True)]

        pipelines = {"label": [IntDecoder(), *to_device()], "index": [IntDecoder(), *to_device()]}
        if "domain" in fields:
            pipelines["domain"] = None
        if crop == "device":
            pipelines["image"] = [SimpleRGBImageDecoder(), *to_device(), ToTorchImage(channels_last=True)]
        else:
            pipelines["image"] = None
            for k, cfg in enumerate(self.view_configs):
                flip = [RandomHorizontalFlip(cfg.flip_prob)] if cfg.flip_prob > 0 else []
                decoder = RandomResizedCropRGBImageDecoder((cfg.size, cfg.size), scale=tuple(cfg.crop_scale),
                                                           ratio=tuple(cfg.crop_ratio))
                pipelines[f"view{k}"] = PipelineSpec("image", decoder=decoder,
                                                     transforms=[*flip, *to_device(), ToTorchImage(channels_last=True)])
        orders = {"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM,
                  "sequential": OrderOption.SEQUENTIAL}
        self.ffcv_seed = epoch_seed(self.seed, 0, PERMUTATION) % (2**31 - 1)
        try:
            self._loader = Loader(str(self.path), batch_size=rows, num_workers=self.num_workers, os_cache=os_cache,
                                  order=orders[self.order], seed=self.ffcv_seed, indices=self.subset,
                                  pipelines=pipelines, drop_last=drop_last, batches_ahead=batches_ahead)
        except (ValueError, AssertionError, OSError) as e:
            raise DataError(f"FFCV could not open {str(self.path)!r}: {type(e).__name__}: {e}".replace("\n", " ")) from None
        self._outputs = list(self._loader.pipeline_specs)
        # FFCV's QuasiRandom shuffles its page table in place, so epoch e's order would depend on the epochs run
        # before it in this process; restoring the table before each epoch makes it a function of (seed, e) again
        table = getattr(self._loader.traversal_order, "page_to_samples_array", None)
        self._page_table = None if table is None else table.copy()
        if self.shard is not None:
            self._loader.traversal_order = RowsOfGlobalBatches(self._loader.traversal_order, batch_size, self.shard)
            self._loader.first_traversal_order = self._loader.traversal_order.sample_order(0)  # FFCV's len()

    def __iter__(self):
        gen = epoch_generator(self.seed, self.epoch, AUGMENTATION, self.device)
        self._loader.next_epoch = self.epoch  # FFCV orders epoch e from (its seed, e)
        if self._page_table is not None:
            self._loader.traversal_order.page_to_samples_array[...] = self._page_table
        it = iter(self._loader)
        try:
            for batch in it:
                out = dict(zip(self._outputs, batch))
                # FFCV reuses its output buffers a few batches later: hand out fresh tensors
                labels = out["label"].view(-1).clone()
                indices = out["index"].view(-1).clone()
                with draw_rows(self.batch_size, self.shard):  # a rank draws for the global batch, keeps its rows
                    if self.crop == "device":
                        x = out["image"].float().div_(255.0)
                        views = [augment_batch(x, cfg, gen) for cfg in self.view_configs]
                    else:
                        views = [after_crop(out[f"view{k}"].float().div_(255.0), cfg, gen)
                                 for k, cfg in enumerate(self.view_configs)]
                yield views, labels, indices
        finally:
            # The consumer left (maybe early): stop FFCV's prefetch thread and wait for it before its buffers are
            # released. FFCV's own close() only signals; a thread still inside a numba pipeline at interpreter exit
            # aborts the process ("terminate called without an active exception").
            it.terminate_event.set()
            it.join(timeout=30)
            it.close()


class RowsOfGlobalBatches:
    """An FFCV traversal order restricted to one rank's rows ``shard`` of each global batch of ``batch_size``
    (whole global batches only: the rest is what drop_last drops); everything else is the wrapped order's."""

    def __init__(self, order, batch_size: int, shard: slice):
        self.order, self.batch_size, self.shard = order, batch_size, shard

    def sample_order(self, epoch: int) -> np.ndarray:
        return rows_of_global_batches(np.asarray(self.order.sample_order(epoch)), self.batch_size, self.shard)

    def __getattr__(self, name):  # QuasiRandom's page table, seed, indices, ...
        return getattr(self.order, name)


def _describe(source) -> str:
    if hasattr(source, "labels") and hasattr(source, "__len__"):
        return f"<{type(source).__name__} {getattr(source, 'name', '')} of {len(source)} images>"
    return repr(source)[:80]


__all__ = ["CROP_MODES", "ORDERS", "FfcvLoader", "RowsOfGlobalBatches"]
