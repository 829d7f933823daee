"""The anchors' reference pipeline: PIL + torchvision transforms per sample in DataLoader workers.

Built as `cassle/utils/pretrain_dataloader.py` builds it (anchors-methods.md §1.4): RandomResizedCrop (bicubic),
RandomApply([ColorJitter], p), RandomGrayscale, RandomApply([GaussianBlur (PIL)], p), RandomSolarize (ImageOps,
threshold 128), RandomHorizontalFlip, ToTensor, Normalize. It is the correctness reference and benchmark baseline
for the batched loaders. Unlike the anchors, workers persist across epochs, and each sample's augmentation is seeded
from (seed, epoch, index), so batches are a function of (seed, epoch) whatever the number of workers.
torchvision is imported only when the transforms are built.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from fastpnr.errors import FastPNRError, require

from .config import CIFAR_MEAN, CIFAR_STD, ViewConfig
from .gpu_resident import resolve_subset, resolve_views
from .seeding import AUGMENTATION, PERMUTATION, epoch_generator, epoch_seed
from .shard import rows_of_global_batches


def import_torchvision_transforms():
    """`torchvision.transforms`, or a one-line error saying how to install it."""
    try:
        from torchvision import transforms
    except ImportError:
        raise FastPNRError(f"torchvision is not installed; install it with `pip install torchvision` (the build "
                           f"matching torch {torch.__version__}) to use the 'torchvision' loader") from None
    return transforms


class PilGaussianBlur:
    """PIL `ImageFilter.GaussianBlur(radius=sigma)`, sigma ~ U[lo, hi] (cassle's GaussianBlur, drawn with torch)."""

    def __init__(self, sigma=(0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, img):
        from PIL import ImageFilter

        sigma = self.sigma[0] + (self.sigma[1] - self.sigma[0]) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))


def build_torchvision_transform(cfg: ViewConfig):
    """The per-sample PIL → normalized (3, S, S) float tensor transform of one view."""
    T = import_torchvision_transforms()
    interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[cfg.interpolation]
    if cfg.is_deterministic:
        ops = [T.Resize(cfg.size, interpolation=interp), T.CenterCrop(cfg.size)]
    else:
        ops = [T.RandomResizedCrop(cfg.size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, interpolation=interp)]
    if cfg.jitters:
        ops.append(T.RandomApply([T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                                 p=cfg.jitter_prob))
    if cfg.grayscale_prob > 0:
        ops.append(T.RandomGrayscale(p=cfg.grayscale_prob))
    if cfg.blur_prob > 0:
        ops.append(T.RandomApply([PilGaussianBlur(cfg.blur_sigma)], p=cfg.blur_prob))
    if cfg.solarize_prob > 0:
        ops.append(T.RandomSolarize(threshold=128, p=cfg.solarize_prob))
    if cfg.flip_prob > 0:
        ops.append(T.RandomHorizontalFlip(p=cfg.flip_prob))
    ops += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(ops)


class EpochSampler(Sampler):
    """Yields `(epoch, dataset_index)` keys: the subset in a (seed, epoch)-seeded order (or as given)."""

    def __init__(self, subset: np.ndarray, seed: int, shuffle: bool, batch_size: int = 1, shard: slice | None = None):
        self.subset, self.seed, self.shuffle, self.epoch = torch.from_numpy(subset), seed, shuffle, 0
        self.batch_size, self.shard = batch_size, shard  # shard: this rank's rows of every full global batch

    def __len__(self) -> int:
        if self.shard is None:
            return len(self.subset)
        return len(self.subset) // self.batch_size * (self.shard.stop - self.shard.start)

    def __iter__(self):
        order = self.subset
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=epoch_generator(self.seed, self.epoch, PERMUTATION, "cpu"))]
        order = rows_of_global_batches(order, self.batch_size, self.shard)
        return iter([(self.epoch, i) for i in order.tolist()])


class ViewsDataset(Dataset):
    """`dataset[(epoch, i)]` → (list of view tensors, label, i); sample i's randomness is seeded from (seed, epoch, i)."""

    def __init__(self, source, transforms, seed: int):
        self.source, self.transforms, self.seed = source, transforms, seed
        self.images = getattr(source, "images", None)
        self.labels = np.asarray(source.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def _pil(self, i: int):
        from PIL import Image

        return Image.fromarray(self.images[i] if self.images is not None else self.source.image(i))

    def __getitem__(self, key):
        epoch, i = key
        in_main = get_worker_info() is None
        saved = torch.get_rng_state() if in_main else None  # do not disturb the trainer's global RNG
        torch.manual_seed(epoch_seed(self.seed, epoch, AUGMENTATION, i))
        try:
            img = self._pil(i)
            views = [t(img) for t in self.transforms]
        finally:
            if saved is not None:
                torch.set_rng_state(saved)
        return views, int(self.labels[i]), i


class TorchvisionLoader:
    """The anchors' per-sample pipeline behind the common loader contract (views on `device`, channels_last).

    `transforms` (optional) replaces the torchvision transforms: one callable per view, PIL image → (3, S, S)
    float tensor (used by tests where torchvision is absent). Other kwargs go to `DataLoader`
    (default num_workers=4, persistent workers, pin_memory when `device` is CUDA).
    """

    def __init__(self, source, batch_size: int, num_views: int, device, seed: int, shuffle: bool = True,
                 drop_last: bool = True, view_configs=None, subset=None, transforms=None, num_workers: int = 4,
                 shard: slice | None = None, **dataloader_kw):
        require(isinstance(seed, (int, np.integer)) and seed >= 0, "seed", seed, "an int >= 0")
        n = len(source.labels)
        subset = resolve_subset(subset, n, batch_size, drop_last)
        require(isinstance(num_workers, int) and num_workers >= 0, "num_workers", num_workers, "an int >= 0")
        if transforms is None:
            images = getattr(source, "images", None)
            size = images.shape[1] if images is not None else source.image(0).shape[0]
            default = ViewConfig(size=size, mean=tuple(getattr(source, "mean", CIFAR_MEAN)),
                                 std=tuple(getattr(source, "std", CIFAR_STD)))
            self.view_configs = resolve_views(view_configs, num_views, default)
            transforms = [build_torchvision_transform(cfg) for cfg in self.view_configs]
        else:
            require(len(transforms) == num_views, "len(transforms)", len(transforms), f"num_views={num_views}")
        self.device = torch.device(device)
        self.num_views = num_views
        self.sampler = EpochSampler(subset, int(seed), shuffle, batch_size, shard)
        if shard is not None:  # the rank's rows of each global batch (per-sample seeds: as in one process)
            batch_size = shard.stop - shard.start
        # an own generator: DataLoader would otherwise draw its worker base seed from the trainer's global RNG
        kw = dict(num_workers=num_workers, pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
                  generator=torch.Generator().manual_seed(int(seed)))
        kw.update(dataloader_kw)
        self.loader = DataLoader(ViewsDataset(source, transforms, int(seed)), batch_size=batch_size,
                                 sampler=self.sampler, drop_last=drop_last, **kw)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        require(isinstance(epoch, int) and epoch >= 0, "epoch", epoch, "an int >= 0")
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        dev = self.device
        it = iter(self.loader)
        while True:
            try:
                views, labels, indices = next(it)
            except StopIteration:
                return
            except FastPNRError as e:  # e.g. a corrupt image (DataError), raised in a worker
                raise type(e)(worker_message(e)) from None
            views = [v.to(dev, non_blocking=True, memory_format=torch.channels_last) for v in views]
            yield views, labels.to(dev, non_blocking=True), indices.to(dev, non_blocking=True)


def worker_message(e: BaseException) -> str:
    """The one-line message of an error raised in a DataLoader worker: DataLoader re-raises it with "Caught ... in
    DataLoader worker process N." and the worker's whole traceback; the original message is its last line."""
    msg = str(e)
    lines = [line.strip() for line in msg.splitlines() if line.strip()]
    if len(lines) <= 1:
        return msg
    last = lines[-1]
    for prefix in (f"{type(e).__module__}.{type(e).__qualname__}: ", f"{type(e).__qualname__}: "):
        if last.startswith(prefix):
            return last[len(prefix):]
    return last
