"""Loaders: `make_loader(kind, ...)` → an iterable of `(views, labels, indices)` on the device (docs/ARCHITECTURE.md).

Every kind yields `views`: a list of `num_views` float (B, 3, S, S) tensors, normalized, channels_last, on `device`,
and int64 `labels`, `indices` on `device`; it has `len()` and `set_epoch(e)`, and epoch e's batches are a function
of (seed, e). Loader modules are imported on first use, so optional backends (torchvision, ffcv, DALI) cost nothing
until asked for. `Prefetcher(loader, device)` wraps any of them so that on CUDA the next batch is produced on a side
stream while the current step runs (loaders/prefetch.py).
"""
from __future__ import annotations

import importlib

from fastpnr.errors import FastPNRError, require

from .config import ViewConfig, cifar_views, imagenet_views
from .shard import check_shard

_LAZY = {"augment_batch": ".gpu_aug", "Prefetcher": ".prefetch"}  # torch: imported on first use, so that the
# configuration checks (LOADERS, loaders.config) run before torch loads


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# kind → (module, class, what it needs)
LOADERS = {
    "gpu": ("loaders.gpu_resident", "GpuResidentLoader", "decoded images (load_dataset(..., decode=True))"),
    "torchvision": ("loaders.torchvision_loader", "TorchvisionLoader", "pip install torchvision"),
    "ffcv": ("loaders.ffcv_loader", "FfcvLoader", "pip install ffcv==1.0.2 and a .beton file (fastpnr to_beton)"),
    "dali": ("loaders.dali_loader", "DaliLoader", "pip install nvidia-dali-cuda130 (the extra fastpnr[dali])"),
}


def loader_class(kind: str):
    """The loader class registered as `kind`, imported now."""
    require(kind in LOADERS, "loader.kind", kind, sorted(LOADERS))
    module, name, needs = LOADERS[kind]
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise FastPNRError(f"loader kind {kind!r} is not available yet ({module} is not written; it will need: "
                           f"{needs})") from None


# kind → (module, function) that imports the kind's optional package or raises its one-line install hint
DEPENDENCIES = {
    "torchvision": ("loaders.torchvision_loader", "import_torchvision_transforms"),
    "ffcv": ("loaders.ffcv_ops", "import_ffcv"),
    "dali": ("loaders.dali_loader", "import_dali"),
}


def require_available(kind: str) -> None:
    """Raise the one-line install hint now if loader `kind` cannot run here (checked before a run loads data)."""
    loader_class(kind)
    if kind in DEPENDENCIES:
        module, function = DEPENDENCIES[kind]
        getattr(importlib.import_module(module), function)()


def make_loader(kind: str, source, batch_size: int, num_views: int, device, seed: int, shuffle: bool = True,
                drop_last: bool = True, view_configs=None, subset=None, shard: slice | None = None, **kw):
    """Build a loader of `kind` over `source` (an ImageDataset) restricted to `subset` (dataset indices, a task).

    view_configs: one `ViewConfig` per view, or one shared, or None (the default `ViewConfig` at the stored size).
    Extra kwargs go to the loader class (e.g. `resident=` for "gpu", `num_workers=` for "torchvision").
    shard: this rank's rows of every global batch of `batch_size` (torchrun); the union over ranks of batch k is
    one process's batch k (its augmentations too, except with dali). `len()` counts global batches.
    """
    cls = loader_class(kind)
    shard = check_shard(shard, batch_size, drop_last)
    return cls(source, batch_size=batch_size, num_views=num_views, device=device, seed=seed, shuffle=shuffle,
               drop_last=drop_last, view_configs=view_configs, subset=subset, shard=shard, **kw)


__all__ = ["LOADERS", "Prefetcher", "ViewConfig", "augment_batch", "cifar_views", "imagenet_views", "loader_class", "make_loader", "require_available"]
