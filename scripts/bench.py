"""Side-by-side training-step throughput: the anchors' pipeline against fastpnr's configurations, in one run.

Every row trains the same model for ``steps`` timed steps after ``warmup`` untimed ones (graph capture happens
there): SimCLR + PNR (``--methods``, ``--regularizer``) with the frozen previous model active (``begin_task(method,
1)``, so the frozen forward runs every step), ResNet-18 with the CIFAR stem, two views, the online probe on the
first view, real CIFAR-10 images from ``../shared/data`` (``fastpnr.data.load_dataset``), augmentation included.
Time is wall clock from the first timed batch request to a device sync after the last step; img/s counts
training images (batch size x steps), not views.

Rows:
- reference: the anchors' pipeline — PIL + torchvision augmentation per sample in ``--workers`` DataLoader
  workers (``loaders.make_loader("torchvision", ...)``), fp16 + GradScaler, NCHW, eager, one stream, no prefetch;
- fastpnr: bf16 autocast, channels_last, the next batch produced on a side stream while the step runs
  (``loaders.Prefetcher``, CUDA only); with the GPU-resident loader (batched augmentation) in the four
  combinations of eager vs the whole step in one CUDA graph and the frozen forward on the main stream vs its own,
  then each other loader — ``ffcv`` (a ``.beton`` of the same images, written once into the decode cache, or a
  temporary folder with ``--quick``; crop="device"), ``dali`` (the original JPEG bytes) and ``torchvision`` (the
  reference's data path under fastpnr's step) — with the graph and two streams. A loader whose package is not
  installed gives a "skipped" row.
The ratio column is each row's img/s over the reference's (>1 = faster). On CPU, fp16 becomes fp32, CUDA graphs
and side streams do not exist (those rows run eagerly and say so): CPU numbers only show that the script works.

    fastpnr bench                                   # CUDA, batch 256, 50 timed steps
    fastpnr bench --device cpu --quick              # seconds; a smoke test (batch 8, 16 px, 2 steps)
"""
from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    # Run as a file, scripts/ leads sys.path, and its profile.py would shadow the stdlib ``profile`` that
    # cProfile (imported by torch) needs: put the repository root there instead.
    _root = Path(__file__).resolve().parents[1]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(_root / "scripts")]
    sys.path.insert(0, str(_root))

import torch


@dataclass(frozen=True)
class Row:
    """One configuration: its loader kind, precision (on CUDA), memory format, CUDA graph, frozen-model stream, and
    whether the next batch is produced on a side stream during the step (``loaders.Prefetcher``)."""
    name: str
    loader: str
    precision: str
    channels_last: bool
    cuda_graph: bool
    two_streams: bool
    prefetch: bool = True
    compile: str = "off"  # train.compile of the online backbone


REFERENCE = Row("anchors' pipeline (torchvision, fp16, NCHW, eager, 1 stream)", "torchvision", "fp16", False, False, False,
                prefetch=False)
FASTPNR_ROWS = [
    Row("fastpnr gpu loader, bf16 channels_last, eager, 1 stream", "gpu", "bf16", True, False, False),
    Row("fastpnr gpu loader, bf16 channels_last, eager, 2 streams", "gpu", "bf16", True, False, True),
    Row("fastpnr gpu loader, bf16 channels_last, graph, 1 stream", "gpu", "bf16", True, True, False),
    Row("fastpnr gpu loader, bf16 channels_last, graph, 2 streams", "gpu", "bf16", True, True, True),
    Row("fastpnr ffcv loader, bf16 channels_last, graph, 2 streams", "ffcv", "bf16", True, True, True),
    Row("fastpnr dali loader, bf16 channels_last, graph, 2 streams", "dali", "bf16", True, True, True),
    Row("fastpnr torchvision loader, bf16 channels_last, graph, 2 streams", "torchvision", "bf16", True, True, True),
]
# loader kind → (importable module of its package, how to install it), for the "skipped" row
PACKAGES = {"torchvision": ("torchvision", "pip install torchvision"), "ffcv": ("ffcv", "pip install ffcv==1.0.2"),
            "dali": ("nvidia.dali", "pip install nvidia-dali-cuda130")}
QUICK_IMAGES = 512  # --quick: only the first images of the train split are decoded (nothing cached), a small .beton


_ARGV: list[str] = []  # the command line, for the header (set by ``cli``)


def quiet(*_a, **_k):
    pass


def load_train_set(data_dir=None, image_size=None, limit=None):
    """CIFAR-10 train, decoded (and cached); `limit`: only its first `limit` images, decoded for this run only."""
    from fastpnr.data import load_dataset

    return load_dataset("cifar10", "train", data_dir, image_size=image_size, limit=limit)


class _Head:
    """The first ``n`` images of a decoded dataset, as ``write_beton`` reads it (labels, image(i), len)."""

    domain_ids = None

    def __init__(self, ds, n: int):
        self.ds, self.name, self.labels = ds, getattr(ds, "name", "?"), ds.labels[:n]

    def image(self, i: int):
        return self.ds.image(i)

    def __len__(self) -> int:
        return len(self.labels)


class BenchData:
    """The benchmark's images for every loader kind: decoded (gpu, torchvision), a ``.beton`` of them (ffcv), the
    encoded JPEG bytes (dali); ``subset`` (None: all) restricts every loader to the same images."""

    def __init__(self, decoded, data_dir=None, subset: int | None = None, beton_dir=None, cache_dir=None):
        self.decoded, self.data_dir, self.cache_dir = decoded, data_dir, cache_dir
        self.subset = None if subset is None else list(range(min(subset, len(decoded))))
        self.beton_dir = beton_dir
        self._encoded = self._beton = None

    def source(self, kind: str):
        if kind == "ffcv":
            return str(self.beton())
        if kind == "dali":
            return self.encoded()
        return self.decoded

    def encoded(self):
        if self._encoded is None:
            from fastpnr.data import load_dataset

            limit = None if self.subset is None else len(self.subset)  # the subset is a prefix: read only it
            self._encoded = load_dataset(self.decoded.name, self.decoded.split, self.data_dir, decode=False,
                                         cache_dir=self.cache_dir, limit=limit)
        return self._encoded

    def beton(self) -> Path:
        """A raw-pixel ``.beton`` of the decoded images (of ``subset``), written once."""
        if self._beton is None:
            from fastpnr.data import cache_root
            from loaders.ffcv_ops import write_beton

            ds = self.decoded
            n = len(ds) if self.subset is None else len(self.subset)
            folder = Path(self.beton_dir) if self.beton_dir is not None else cache_root(self.cache_dir) / "betons"
            path = folder / f"bench-{ds.name}-{ds.split}-{ds.images.shape[1]}px-{n}.beton"
            if not path.exists():
                write_beton(ds if n == len(ds) else _Head(ds, n), path, num_workers=max(1, min(4, os.cpu_count() or 1)))
            self._beton = path
        return self._beton


def missing(kind: str) -> str | None:
    """Why loader ``kind`` cannot run here (its package is not installed), else None."""
    import importlib.util

    if kind not in PACKAGES:
        return None
    module, install = PACKAGES[kind]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"skipped: {module} not installed ({install})"


def build_setup(row: Row, data, device: torch.device, batch_size: int, method_name="simclr",
                regularizer_name="pnr", workers: int = 4, seed: int = 0, log=quiet, quick: bool = False, dist=None,
                config_overrides: dict | None = None):
    """(trainer, loader) for one row: fresh model, frozen model active, LARS, the row's loader and step options.

    config_overrides: laid over the smoke preset last (``fastpnr bench_cpu``: its precision and sizes, as given).
    data: a ``BenchData`` (or a decoded dataset, for the gpu and torchvision loaders).
    dist: a ``fastpnr.system.distributed`` process group (torchrun): ``batch_size`` is then the global batch, each rank
    trains on its shard with global BatchNorm and the gathered losses, as ``fastpnr train`` does."""
    from fastpnr.system import distributed
    from fastpnr.config import build_config
    from fastpnr.methods import build_method
    from fastpnr.train.optim import build_optimizer, set_lr
    from fastpnr.regularizers import build_regularizer
    from fastpnr.train.trainer import Trainer, compile_backbone
    from loaders import Prefetcher, cifar_views, make_loader

    if not isinstance(data, BenchData):
        data = BenchData(data)
    train_set = data.decoded
    precision = row.precision
    if device.type != "cuda" and precision in ("fp16", "bf16"):
        precision = "fp32"  # fp16 needs CUDA; bf16 convolutions on a CPU only measure the CPU's bf16 support
    overrides = {"method": method_name, "regularizer": regularizer_name, "optim.batch_size": batch_size,
                 "train.precision": precision, "train.cuda_graph": row.cuda_graph, "train.frozen_stream": row.two_streams,
                 "train.online_probe": "task", "model.channels_last": row.channels_last, "train.device": str(device),
                 "train.compile": row.compile}
    if quick:
        overrides.update({"method.proj_hidden": 64, "method.proj_out": 32, "regularizer.distill_hidden": 32})
    overrides.update(config_overrides or {})
    cfg = build_config("smoke", overrides)
    torch.manual_seed(seed)
    method = build_method(cfg.method, cfg.model, num_classes=len(train_set.classes))
    reg = build_regularizer(cfg.regularizer, method)
    dist = dist or distributed.SINGLE
    if dist.enabled:
        distributed.convert_batchnorm(method)
        distributed.convert_batchnorm(reg)
    method.dist = reg.dist = dist
    fmt = torch.channels_last if row.channels_last else torch.contiguous_format
    method.to(device, memory_format=fmt)
    reg.to(device, memory_format=fmt)
    dist.broadcast_module(method)
    compile_backbone(method, cfg.train)
    reg.begin_task(method, 0)
    reg.begin_task(method, 1)  # the frozen previous model is active: its forward runs every step
    opt = build_optimizer(method.param_groups(cfg.optim) + reg.param_groups(cfg.optim), cfg.optim)
    set_lr(opt, 0, cfg.optim.epochs, cfg.optim)
    trainer = Trainer(method, reg, opt, cfg.train, device, log=log, dist=dist)
    size = train_set.images.shape[1]
    kw = {"torchvision": {"num_workers": workers, "pin_memory": device.type == "cuda"},
          "ffcv": {"num_workers": max(1, workers)}, "dali": {"num_threads": max(1, workers)}}.get(row.loader, {})
    subset = data.subset if row.loader != "ffcv" else None  # the .beton holds just the subset
    loader = make_loader(row.loader, data.source(row.loader), batch_size=batch_size, num_views=method.num_views, device=device,
                         seed=seed, view_configs=_views(cifar_views(size, mean=train_set.mean, std=train_set.std),
                                                        method.num_views),
                         subset=subset, shard=dist.shard(batch_size) if dist.enabled else None, **kw)
    if row.prefetch:
        loader = Prefetcher(loader, device)
    return trainer, loader


def _views(pair: list, num_views: int) -> list:
    """The two CIFAR views repeated for a method's ``num_views`` (GSG: 4, alternating as task_data.view_configs)."""
    return [pair[v % 2] for v in range(num_views)]


def batches(loader, nchw: bool):
    """Endless (views, labels) from ``loader``, epoch after epoch; NCHW copies for the reference model."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        for views, labels, _ in loader:
            if nchw:
                views = [v.contiguous() for v in views]
            yield views, labels
        epoch += 1


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_row(trainer, loader, device, steps: int, warmup: int, nchw: bool) -> float:
    """Images per second over ``steps`` steps after ``warmup`` untimed ones."""
    return timed_steps(trainer, loader, device, steps, warmup, nchw)[0]


def timed_steps(trainer, loader, device, steps: int, warmup: int, nchw: bool) -> tuple[float, list[float]]:
    """(images per second over ``steps`` steps after ``warmup`` untimed ones, [first step's loss, last step's
    loss]). Under torchrun (``trainer.dist``) every rank starts and stops the clock at a barrier, and the images and
    the losses are the global batch's. The first loss is read in the warm-up (a host sync outside the clock)."""
    dist = trainer.dist
    it = batches(loader, nchw)
    total = warmup + steps
    losses = []
    for i in range(total):
        if i == warmup:
            _sync(device)
            dist.barrier()
            start = time.perf_counter()
        views, labels = next(it)
        logs = trainer.run_step(views, labels, (None, labels), i, total)
        if i == 0 and warmup > 0:
            losses.append(dist.mean_logs({"loss": logs["loss"]})["loss"])
    _sync(device)
    dist.barrier()
    elapsed = time.perf_counter() - start
    losses.append(dist.mean_logs({"loss": logs["loss"]})["loss"])
    if any(v != v for v in losses):
        raise RuntimeError(f"non-finite loss in the benchmark ({losses})")
    return steps * labels.shape[0] * dist.world_size / elapsed, losses


def _as_list(value) -> list:
    """fire turns "a,b" into a tuple and "1" into an int; accept those and plain comma-separated strings."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [v.strip() for v in str(value).split(",") if v.strip()]


def main(device="cuda", quick=False, batch_size=256, steps=50, warmup=10, data_dir=None, methods="simclr",
         regularizer="pnr", workers=4, image_size=None, rows="all", beton_dir=None, compile="off"):
    """Run the reference and fastpnr rows; print a header, img/s per row and each row's ratio to the reference.

    rows: "all", or comma-separated indices into [reference, *fastpnr rows] (0 = reference).
    quick: a smoke test in seconds (batch 8, 16 px, 2 steps after 1, the loaders on the first 512 images, the
    only ones decoded).
    beton_dir: where the ffcv row's .beton goes (default: the decode cache; with --quick a temporary folder).
    compile: a torch.compile mode (default, max-autotune-no-cudagraphs) adds a row with the gpu loader, the compiled
    backbone, the graph and two streams; compilation runs in the warm-up, untimed (max-autotune: minutes).
    """
    from fastpnr.config import COMPILE_MODES
    import tempfile

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
    if quick:
        batch_size, steps, warmup, image_size = min(batch_size, 8), min(steps, 2), min(warmup, 1), image_size or 16
        workers = min(workers, 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    method_names = [str(m) for m in _as_list(methods)]
    from fastpnr.errors import require

    require(compile in COMPILE_MODES, "compile", compile, COMPILE_MODES)
    all_rows = [REFERENCE, *FASTPNR_ROWS]
    if compile != "off":
        all_rows.append(Row(f"fastpnr gpu loader, bf16 channels_last, compile {compile}, graph, 2 streams", "gpu",
                            "bf16", True, True, True, compile=compile))
    picked = all_rows if rows == "all" else [all_rows[int(i)] for i in _as_list(rows)]
    t0 = time.perf_counter()
    train_set = load_train_set(data_dir, image_size, limit=QUICK_IMAGES if quick else None)
    tmp = tempfile.TemporaryDirectory(prefix="fastpnr-bench-") if quick and beton_dir is None else None
    data = BenchData(train_set, data_dir, subset=QUICK_IMAGES if quick else None,
                     beton_dir=tmp.name if tmp is not None else beton_dir)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# fastpnr bench | device: {dev_name} | torch {torch.__version__} | command: fastpnr bench {' '.join(_ARGV or sys.argv[1:])}")
    used = len(train_set) if data.subset is None else len(data.subset)
    print(f"# batch {batch_size} | {steps} timed steps after {warmup} warm-up | cifar10 train {used} images "
          f"{train_set.images.shape[1]} px (loaded in {time.perf_counter() - t0:.1f}s) | {regularizer} frozen model active "
          f"| workers {workers}")
    if device.type != "cuda":
        print("# cpu: fp16/bf16 rows run in fp32, CUDA graphs, side streams and prefetch fall back to eager / one "
              "stream (a smoke test, not a speed figure)")
    try:
        for method_name in method_names:
            results = []
            print(f"\n## {method_name} + {regularizer}")
            print(f"{'configuration':<66} | {'img/s':>9} | ratio")
            for row in picked:
                skip, notes, ips = missing(row.loader), [], None
                if skip is None:
                    threads = torch.get_num_threads()
                    try:
                        trainer, loader = build_setup(row, data, device, batch_size, method_name, regularizer, workers,
                                                      log=lambda line, n=notes: n.append(line), quick=quick)
                        ips = time_row(trainer, loader, device, steps, warmup, nchw=not row.channels_last)
                        if trainer.graph is not None and trainer.graph.reason is not None and device.type == "cuda":
                            notes.append(f"graph fell back to eager: {trainer.graph.reason}")
                    except Exception as e:  # one failing row must not hide the others
                        skip = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                    finally:
                        trainer = loader = None
                        gc.collect()
                        torch.set_num_threads(threads)  # FFCV sets torch's thread count when an epoch starts
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                results.append((row, None if skip else ips, skip, notes if not skip else []))
                _print_row(results, row)
            _print_summary(results)
    finally:
        if tmp is not None:
            gc.collect()
            tmp.cleanup()


def _baseline(results):
    ref = next((r for r in results if r[0] is REFERENCE), None)
    if ref is not None and ref[1] is not None:
        return ref[1], "the reference"
    first = next((r for r in results if r[1] is not None), None)
    return (first[1], f"the first fastpnr row ({first[0].name}), the reference being skipped") if first else (None, "")


def _print_row(results, row):
    r = results[-1]
    if r[1] is None:
        print(f"{row.name:<66} | {'-':>9} | {r[2]}")
        return
    base, _ = _baseline(results)
    ratio = f"{r[1] / base:.2f}x" if base else "-"
    print(f"{row.name:<66} | {r[1]:>9.0f} | {ratio}")
    for note in r[3]:
        print(f"    ({note})")


def _print_summary(results):
    base, what = _baseline(results)
    if not base:
        print("ratio: no row ran")
        return
    best = max((r for r in results if r[1] is not None), key=lambda r: r[1])
    print(f"ratio vs {what}: best {best[1] / base:.2f}x ({best[0].name}, {best[1]:.0f} img/s vs {base:.0f} img/s)")


def cli(argv):
    from fastpnr.cli import run_fire

    _ARGV[:] = list(argv)
    run_fire(main, argv, name="fastpnr bench")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
