"""The whole split resident on the device as uint8; batches are index slices, augmented with `gpu_aug` as a batch.

No workers, no per-sample Python, no host round trip (KellerJordan/cifar10-airbench's CifarLoader, style.md §4).
Runs on CPU too (then "device" memory is host memory).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from fastpnr.errors import require

from .config import CIFAR_MEAN, CIFAR_STD, ViewConfig
from .gpu_aug import augment_batch, draw_rows
from .shard import check_shard
from .seeding import AUGMENTATION, PERMUTATION, EpochBatches, epoch_generator

RESIDENT_MODES = ("auto", "device", "host")


def resolve_views(view_configs, num_views: int, default: ViewConfig) -> list[ViewConfig]:
    """One ViewConfig per view: None → `default` for all; one config → shared; else exactly `num_views`."""
    require(isinstance(num_views, int) and num_views >= 1, "num_views", num_views, "an int >= 1")
    if view_configs is None:
        return [default] * num_views
    if isinstance(view_configs, ViewConfig):
        view_configs = [view_configs]
    view_configs = list(view_configs)
    require(all(isinstance(v, ViewConfig) for v in view_configs), "view_configs", view_configs, "loaders.ViewConfig objects")
    require(len(view_configs) in (1, num_views), "len(view_configs)", len(view_configs), f"1 or num_views={num_views}")
    return view_configs * num_views if len(view_configs) == 1 else view_configs


def resolve_subset(subset, n: int, batch_size: int, drop_last: bool) -> np.ndarray:
    """Validated int64 dataset indices of the task (all of them when None)."""
    require(isinstance(batch_size, int) and batch_size > 0, "batch_size", batch_size, "an int > 0")
    idx = np.arange(n, dtype=np.int64) if subset is None else np.asarray(subset).reshape(-1)
    require(idx.size > 0, "subset", "[] (empty)", "a non-empty list of dataset indices")
    require(np.issubdtype(idx.dtype, np.integer), "subset.dtype", str(idx.dtype), "integer indices")
    lo, hi = int(idx.min()), int(idx.max())
    require(lo >= 0 and hi < n, "subset", f"indices in [{lo}, {hi}]", f"indices in [0, {n - 1}]")
    require(not drop_last or batch_size <= idx.size, "batch_size", batch_size,
            f"at most len(subset)={idx.size} with drop_last=True")
    return idx.astype(np.int64)


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only arrays (memory maps) are fine: nothing writes into them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(a))


class GpuResidentLoader(EpochBatches):
    """Iterable of `(views, labels, indices)` for one task of a decoded dataset.

    source: an ImageDataset (`images` uint8 (N,H,W,3), `labels` int64 (N,), `mean`, `std`).
    subset: dataset indices of the task (None = all). Epoch e's order is `torch.randperm` on `device` from a
    generator seeded with (seed, e, 0) and its augmentations come from one seeded with (seed, e, 1): batches are a
    function of (seed, e). Call `set_epoch(e)` before iterating; the epoch does not advance by itself.
    drop_last=True keeps every batch the same shape (CUDA graphs); otherwise the last partial batch is yielded.
    batch_passes: each batch is yielded that many times in a row, each time with fresh augmentations (the next draws
    of the epoch's generator; 1: the batches as always), so ``len()`` counts every pass (online CL's minibatch passes).
    shard: this rank's rows of every global batch of ``batch_size`` (``distributed.Dist.shard``); their
    augmentation parameters are the ones the whole batch would get in one process (``gpu_aug.draw_rows``).
    resident: "device" keeps (N,3,H,W) uint8 on `device`; "host" keeps it in host memory (pinned when `device` is
    CUDA) and copies each batch with non_blocking=True; "auto" picks "host" only for CUDA when the images exceed
    `max_resident_bytes` (default: half of the free device memory).
    """

    def __init__(self, source, batch_size: int, num_views: int, device, seed: int, shuffle: bool = True,
                 drop_last: bool = True, view_configs=None, subset=None, resident: str = "auto",
                 max_resident_bytes: int | None = None, shard: slice | None = None, batch_passes: int = 1):
        images = getattr(source, "images", None)
        require(isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3,
                "source.images", None if images is None else getattr(images, "shape", type(images)),
                "decoded uint8 (N, H, W, 3) images (load_dataset(..., decode=True, image_size=...))")
        labels = np.asarray(source.labels)
        require(labels.shape == (len(images),), "source.labels.shape", labels.shape, f"({len(images)},)")
        require(isinstance(seed, (int, np.integer)) and seed >= 0, "seed", seed, "an int >= 0")
        require(resident in RESIDENT_MODES, "resident", resident, RESIDENT_MODES)
        self.device = torch.device(device)
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, int(seed)
        self.shard = check_shard(shard, batch_size, drop_last)
        subset = resolve_subset(subset, len(images), batch_size, drop_last)
        height = images.shape[1]
        default = ViewConfig(size=height, mean=tuple(getattr(source, "mean", CIFAR_MEAN)),
                             std=tuple(getattr(source, "std", CIFAR_STD)))
        self.view_configs = resolve_views(view_configs, num_views, default)
        require(isinstance(batch_passes, int) and batch_passes >= 1, "batch_passes", batch_passes, "an int >= 1")
        self.batch_passes = batch_passes
        self.num_views = num_views
        self.epoch = 0

        if resident == "auto":
            resident = "device"
            if self.device.type == "cuda":
                limit = max_resident_bytes if max_resident_bytes is not None else torch.cuda.mem_get_info(self.device)[0] // 2
                resident = "device" if images.nbytes <= limit else "host"
        self.resident = resident
        host = _as_tensor(images)  # (N, H, W, 3)
        if resident == "device":
            # (N, 3, H, W) contiguous: the crop's grid_sample and the CPU colour ops are faster on NCHW batches
            self.images = host.to(self.device).permute(0, 3, 1, 2).contiguous()
        else:
            self.images = host.pin_memory() if self.device.type == "cuda" else host
        self.labels = _as_tensor(labels.astype(np.int64)).to(self.device)
        self.subset = torch.from_numpy(subset).to(self.device)

    def _gather(self, idx: torch.Tensor, idx_host: torch.Tensor | None) -> torch.Tensor:
        """(B, 3, H, W) uint8 on the device."""
        if self.resident == "device":
            return self.images[idx]
        pin = self.device.type == "cuda"
        buf = torch.empty((len(idx_host), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        torch.index_select(self.images, 0, idx_host, out=buf)  # the caching host allocator keeps buf alive for the copy
        return buf.to(self.device, non_blocking=True).permute(0, 3, 1, 2).contiguous()

    def __iter__(self):
        gen = epoch_generator(self.seed, self.epoch, AUGMENTATION, self.device)
        order = self.subset
        if self.shuffle:
            perm_gen = epoch_generator(self.seed, self.epoch, PERMUTATION, self.device)
            order = order[torch.randperm(len(order), generator=perm_gen, device=self.device)]
        # host-resident images are gathered on the host: one copy of the order per epoch, none per step
        order_host = order.cpu() if self.resident == "host" else None
        for b in range(EpochBatches.__len__(self)):  # the batches; each yielded batch_passes times
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx, idx_host = order[sl], None if order_host is None else order_host[sl]
            if self.shard is not None:  # this rank's rows of the global batch
                idx, idx_host = idx[self.shard], None if idx_host is None else idx_host[self.shard]
            x = self._gather(idx, idx_host).float().div_(255.0)
            for _ in range(self.batch_passes):
                with draw_rows(self.batch_size, self.shard):  # the global batch's augmentation draws
                    views = [augment_batch(x, cfg, gen) for cfg in self.view_configs]
                yield views, self.labels[idx], idx

    def __len__(self) -> int:
        return EpochBatches.__len__(self) * self.batch_passes
