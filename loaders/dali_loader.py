"""NVIDIA DALI loader: the dataset's encoded JPEG bytes → one DALI pipeline with a branch per view → the contract.

Pipeline (one per epoch, seeded from (seed, epoch)):
  external_source (batch mode: this epoch's order, computed in numpy, and the dataset index of each sample)
  per view: decoders.image_random_crop (nvJPEG ROI decode, device "mixed", on CUDA; libjpeg-turbo on "cpu"), with the
            view's crop area and aspect-ratio ranges → resize to size × size (bicubic/bilinear, antialiased)
            → [p=jitter_prob] color_twist (brightness/contrast/saturation ~U[max(0, 1-v), 1+v], hue ~U[-360h, 360h] deg)
            → [p=grayscale_prob] RGB→GRAY ×3 → [p=blur_prob] gaussian_blur (sigma ~U[blur_sigma])
            → [p=solarize_prob] invert pixels >= 128 → crop_mirror_normalize (mirror ~coin_flip(flip_prob), float)
Probabilistic ops are DALI conditionals (`if fn.random.coin_flip(...)`): an op runs only on the samples whose coin
came up, unlike an arithmetic mux that runs every op on every image. Ops with probability 0 are not in the graph.
A view with crop scale (1, 1) and ratio (1, 1) (`ViewConfig.eval`) decodes the whole image, resizes the shorter side
and centre-crops, as torchvision's RandomResizedCrop does for those ranges.

Reproducibility: the epoch's order comes from numpy (seed, epoch); the pipeline is rebuilt per epoch with seed
`epoch_seed(seed, epoch, AUGMENTATION)`, and DALI's random operators draw per-sample, so epoch e's batches are the
same for any `num_threads` or prefetch depth (checked on CPU; ~10-80 ms per rebuild on CPU).

Sharded (`shard=`, torchrun): each rank's pipeline reads, decodes and augments only its rows of every global batch
(the epoch's order cut into global batches), so the ranks' samples of step k are one process's; DALI's random draws
are per sample slot of its own batch, which no rank can align with one process's, so each rank seeds its pipeline
from (seed, epoch, its first row): augmentations are a function of (seed, epoch, world size), not of the seed alone.

Differences from the torchvision reference (same family, not bit-equal): DALI's color_twist applies brightness,
contrast, saturation and hue as one fused colour transform in a fixed order (torchvision: a random order per sample)
and stretches contrast around mid-grey rather than around the image's mean grey; its Gaussian blur is a true
Gaussian in the anchors' DALI window of 23 x 23 (`BLUR_WINDOW`; the reference uses PIL's box-blur approximation);
when none of the 10 crop attempts fits, its fallback box has torchvision's size (aspect clipped to the ratio range)
but a random position, not the centre (probability < 1e-8 per image with the anchors' ranges). The crop area, aspect ratio, position and
flip distributions match torchvision's (tests/loaders/test_crop_faithfulness.py).

nvidia.dali is imported only when a DaliLoader is built: `pip install nvidia-dali-cuda130` (the extra fastpnr[dali]).
"""
from __future__ import annotations

import numpy as np
import torch

from fastpnr.errors import DataError, FastPNRError, require

from .config import CIFAR_MEAN, CIFAR_STD, ViewConfig
from .gpu_resident import resolve_subset, resolve_views
from .seeding import AUGMENTATION, PERMUTATION, EpochBatches, epoch_seed
from .shard import check_shard, rows_of_global_batches

INSTALL_HINT = "pip install nvidia-dali-cuda130 (the extra fastpnr[dali])"
MISSING = f"loader kind 'dali' needs NVIDIA DALI: {INSTALL_HINT}"


def import_dali():
    """(nvidia.dali.fn, nvidia.dali.types, pipeline_def, feed_ndarray), or the one-line install hint."""
    try:
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.pytorch import feed_ndarray
    except ImportError:
        raise FastPNRError(MISSING) from None
    return fn, types, pipeline_def, feed_ndarray


def epoch_order(subset: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's sample order: `subset` permuted by a numpy generator seeded from (seed, epoch), or as given."""
    if not shuffle:
        return subset
    return subset[np.random.default_rng(epoch_seed(seed, epoch, PERMUTATION)).permutation(len(subset))]


# the anchors' DALI blur window, whatever sigma (cassle/utils/dali_dataloader.py L116/L128:
# RandomGaussianBlur(window_size=23), ops.GaussianBlur(window_size=(23, 23))); DALI's own default is 2*ceil(3 sigma)+1
BLUR_WINDOW = 23


def _uniform(fn, lo: float, hi: float):
    return fn.random.uniform(range=[float(lo), float(hi)])


def _augment_view(fn, types, jpegs, cfg: ViewConfig, decoder: str, dev: str):
    """The DALI graph of one view: encoded bytes → (B, S, S, 3) normalized float (HWC layout)."""
    interp = {"bicubic": types.INTERP_CUBIC, "bilinear": types.INTERP_LINEAR}[cfg.interpolation]
    if tuple(cfg.crop_scale) == (1.0, 1.0) and tuple(cfg.crop_ratio) == (1.0, 1.0):
        # ViewConfig.eval's crop: torchvision's rule picks the centre square (whole image when square), so no
        # random crop: resize the shorter side and centre-crop
        img = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
        img = fn.resize(img, device=dev, resize_shorter=cfg.size, interp_type=interp, antialias=True)
        crop = (cfg.size, cfg.size)
    else:
        img = fn.decoders.image_random_crop(jpegs, device=decoder, output_type=types.RGB,
                                            random_area=list(cfg.crop_scale), random_aspect_ratio=list(cfg.crop_ratio),
                                            num_attempts=10)
        img = fn.resize(img, device=dev, resize_x=cfg.size, resize_y=cfg.size, interp_type=interp, antialias=True)
        crop = None
    if cfg.jitters:
        kw = {}
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(cfg, name)
            if v:
                kw[name] = _uniform(fn, max(0.0, 1 - v), 1 + v)
        if cfg.hue:
            kw["hue"] = _uniform(fn, -360.0 * cfg.hue, 360.0 * cfg.hue)  # torchvision's hue factor is a turn fraction
        if cfg.jitter_prob >= 1:
            img = fn.color_twist(img, **kw)
        elif fn.random.coin_flip(probability=cfg.jitter_prob):
            img = fn.color_twist(img, **kw)
    if cfg.grayscale_prob > 0:
        if fn.random.coin_flip(probability=cfg.grayscale_prob):
            gray = fn.color_space_conversion(img, image_type=types.RGB, output_type=types.GRAY)
            img = fn.cat(gray, gray, gray, axis=2)
    if cfg.blur_prob > 0:
        if fn.random.coin_flip(probability=cfg.blur_prob):
            img = fn.gaussian_blur(img, window_size=BLUR_WINDOW, sigma=_uniform(fn, *cfg.blur_sigma))
    if cfg.solarize_prob > 0:
        if fn.random.coin_flip(probability=cfg.solarize_prob):  # x >= 128 → 255 - x, i.e. x XOR 255 on uint8
            img = fn.cast(img ^ (fn.cast(img >= 128, dtype=types.UINT8) * 255), dtype=types.UINT8)
    kw = {"mirror": fn.random.coin_flip(probability=cfg.flip_prob)} if cfg.flip_prob > 0 else {}
    if crop is not None:
        kw["crop"] = crop
    return fn.crop_mirror_normalize(img, device=dev, dtype=types.FLOAT, output_layout="HWC",
                                    mean=[255.0 * m for m in cfg.mean], std=[255.0 * s for s in cfg.std], **kw)


class DaliLoader(EpochBatches):
    """Iterable of `(views, labels, indices)` for one task of a dataset kept as encoded bytes (decode=False).

    source: an ImageDataset whose `encoded(i)` gives image i's bytes (JPEG, PNG, ... anything DALI decodes), with
    `labels`, `mean`, `std`. subset: dataset indices of the task (None = all); each is visited exactly once per
    epoch in an order drawn from (seed, epoch). Call `set_epoch(e)` before iterating: the epoch does not advance
    by itself. drop_last=False yields the last partial batch (DALI's external_source takes variable batch sizes).
    device: "cpu" builds a CPU-only pipeline (device_id=None: tests, no GPU needed); a CUDA device decodes with
    nvJPEG ("mixed") and augments on that GPU. num_threads: DALI CPU worker threads; prefetch: the pipeline's
    prefetch queue depth (batches in flight). Views come back as (B, 3, S, S) float tensors, channels_last (DALI
    writes HWC, viewed as NCHW without a copy), normalized with each view's mean/std.
    shard: this rank's rows of every global batch of `batch_size` (module docstring); `len()` counts global batches.
    """

    def __init__(self, source, batch_size: int, num_views: int, device, seed: int, shuffle: bool = True,
                 drop_last: bool = True, view_configs=None, subset=None, num_threads: int = 4, prefetch: int = 2,
                 shard: slice | None = None):
        self.fn, self.types, self.pipeline_def, self.feed_ndarray = import_dali()
        require(isinstance(seed, (int, np.integer)) and seed >= 0, "seed", seed, "an int >= 0")
        require(isinstance(num_threads, int) and num_threads >= 1, "num_threads", num_threads, "an int >= 1")
        require(isinstance(prefetch, int) and prefetch >= 1, "prefetch", prefetch, "an int >= 1")
        require(callable(getattr(source, "encoded", None)), "source", type(source).__name__,
                "an ImageDataset (fastpnr.data.load_dataset(..., decode=False))")
        self.device = torch.device(device)
        require(self.device.type in ("cpu", "cuda"), "device", str(device), "cpu or a CUDA device")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        n = len(source)
        self.subset = resolve_subset(subset, n, batch_size, drop_last)
        self.shard = check_shard(shard, batch_size, drop_last)
        self.rows = batch_size if self.shard is None else self.shard.stop - self.shard.start  # DALI's batch
        first = source.encoded(int(self.subset[0]))
        if first is None:
            raise DataError(f"dataset {getattr(source, 'name', '?')}/{getattr(source, 'split', '?')} keeps no encoded "
                            "image bytes (decoded only); the 'dali' loader needs them: load it with "
                            "load_dataset(..., decode=False)")
        labels = np.asarray(source.labels)
        require(labels.shape == (n,), "source.labels.shape", labels.shape, f"({n},)")
        self.source = source
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, int(seed)
        self.num_threads, self.prefetch = num_threads, prefetch
        default = ViewConfig(size=_image_size(first), mean=tuple(getattr(source, "mean", CIFAR_MEAN)),
                             std=tuple(getattr(source, "std", CIFAR_STD)))
        self.view_configs = resolve_views(view_configs, num_views, default)
        self.num_views = num_views
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self._bytes = {}  # index → zero-copy uint8 numpy view of its bytes (external_source takes numpy arrays)
        self.epoch = 0

    def _encoded(self, i: int) -> np.ndarray:
        a = self._bytes.get(i)
        if a is None:
            raw = self.source.encoded(i)
            if not raw:
                raise DataError(f"image {i} of {getattr(self.source, 'name', '?')} has no encoded bytes")
            a = self._bytes[i] = np.frombuffer(raw, dtype=np.uint8)
        return a

    def build_pipeline(self, order: np.ndarray, epoch_seed_: int):
        """A built DALI pipeline whose external source serves `order` (this rank's rows) batch by batch (the last
        one maybe partial)."""
        fn, types = self.fn, self.types
        B, n, cuda = self.rows, len(self) * self.rows, self.device.type == "cuda"
        n = min(n, len(order))

        def feed(info):
            lo = info.iteration * B
            if lo >= n:
                raise StopIteration
            idx = order[lo:min(lo + B, n)]
            return [self._encoded(int(i)) for i in idx], [np.array(i, dtype=np.int64) for i in idx]

        decoder, dev = ("mixed", "gpu") if cuda else ("cpu", "cpu")
        views = self.view_configs

        @self.pipeline_def(enable_conditionals=True)
        def graph():
            jpegs, idx = fn.external_source(source=feed, num_outputs=2, batch=True, batch_info=True,
                                            dtype=[types.UINT8, types.INT64])
            return (*[_augment_view(fn, types, jpegs, cfg, decoder, dev) for cfg in views], idx)

        device_id = self.device.index if cuda else None
        pipe = graph(batch_size=B, num_threads=self.num_threads, device_id=device_id, seed=epoch_seed_ % (2 ** 31),
                     prefetch_queue_depth=self.prefetch)
        pipe.build()
        return pipe

    def _to_torch(self, out, dtype) -> torch.Tensor:
        t = out.as_tensor()
        if _is_cpu(out):  # pinned when it goes on to a CUDA device: the non_blocking copy is then really async
            dst = torch.empty(t.shape(), dtype=dtype, pin_memory=self.device.type == "cuda")
        else:
            dst = torch.empty(t.shape(), dtype=dtype, device=self.device)
        stream = torch.cuda.current_stream(self.device) if dst.is_cuda else None
        self.feed_ndarray(t, dst, cuda_stream=stream)
        return dst

    def __iter__(self):
        order = rows_of_global_batches(epoch_order(self.subset, self.seed, self.epoch, self.shuffle), self.batch_size,
                                       self.shard)
        rank_rows = () if self.shard is None else (self.shard.start,)  # ranks draw independent augmentations
        pipe = self.build_pipeline(order, epoch_seed(self.seed, self.epoch, AUGMENTATION, *rank_rows))
        # CUDA: outputs are bound to torch's current stream, and the copies out are queued on it (no host sync)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        try:
            for b in range(len(self)):
                try:
                    outs = pipe.run(stream)
                except RuntimeError as e:  # e.g. a corrupt JPEG: DALI's message spans many lines
                    lo = b * self.rows  # with prefetch the failing batch can be up to `prefetch` ahead
                    suspects = order[lo:lo + (self.prefetch + 1) * self.rows]
                    raise DataError(_one_line_error(e, self.source, self.epoch, suspects)) from None
                views = [self._to_torch(o, torch.float32).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
                         for o in outs[:-1]]
                idx = self._to_torch(outs[-1], torch.int64).reshape(-1).to(self.device, non_blocking=True)
                yield views, self.labels[idx], idx
        finally:
            del pipe


def _one_line_error(e: Exception, source, epoch: int, suspects) -> str:
    """DALI's multi-line pipeline error as one line, naming the first image among `suspects` that PIL cannot read."""
    import io

    from PIL import Image

    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    op = next((s.rstrip(",") for s in lines if s.startswith("Error in")), "")
    after = lines[lines.index("encountered:") + 1:] if "encountered:" in lines else lines[-1:]
    why = next((s for s in after if "no longer valid" not in s), lines[-1] if lines else repr(e))
    msg = f"DALI failed on a batch of {getattr(source, 'name', '?')}/{getattr(source, 'split', '?')} (epoch {epoch}): "
    msg += f"{op}: {why}" if op else why
    members = getattr(source, "members", None)
    for i in map(int, suspects):
        try:
            with Image.open(io.BytesIO(source.encoded(i))) as im:
                im.load()
        except Exception as pe:  # noqa: BLE001 - any reader error marks the image as the culprit
            name = f" ({members[i]})" if members is not None and i < len(members) else ""
            why = "not an image" if type(pe).__name__ == "UnidentifiedImageError" else f"{type(pe).__name__}: {pe}"
            return f"{msg}; image {i}{name} does not decode ({why})".replace("\n", " ")
    return msg.replace("\n", " ")


def _is_cpu(out) -> bool:
    return type(out).__name__.endswith("CPU")


def _image_size(raw: bytes) -> int:
    """The shorter side of one encoded image (the default view size), read with PIL."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as im:
            return min(im.size)
    except Exception as e:  # noqa: BLE001 - any reader error is bad data
        raise DataError(f"could not read the first image of the subset: {type(e).__name__}: {e}") from None
