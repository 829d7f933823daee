"""Side-by-side training-step throughput: the anchors' pipeline against fastpnr's configurations, in one run.

Every row trains the same model for ``steps`` timed steps after ``warmup`` untimed ones (graph capture happens
there): SimCLR + PNR (``--methods``, ``--regularizer``) with the frozen previous model active (``begin_task(method,
1)``, so the frozen forward runs every step), ResNet-18 with the CIFAR stem, two views, the online probe on the
first view, real CIFAR-10 images from ``../shared/data`` (``fastpnr.data.load_dataset``), augmentation included.
Time is wall clock from the first timed batch request to a device sync after the last step; img/s counts
training images (batch size x steps), not views.

Rows:
- reference: the anchors' pipeline — PIL + torchvision augmentation per sample in ``--workers`` DataLoader
  workers (``loaders.make_loader("torchvision", ...)``), fp16 + GradScaler, NCHW, eager, one stream;
- fastpnr: the GPU-resident loader with batched augmentation, bf16 autocast, channels_last; eager or the whole
  step in one CUDA graph; the frozen forward on the main stream or its own.
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
    """One configuration: its loader kind, precision (on CUDA), memory format, CUDA graph, frozen-model stream."""
    name: str
    loader: str
    precision: str
    channels_last: bool
    cuda_graph: bool
    two_streams: bool


REFERENCE = Row("anchors' pipeline (torchvision, fp16, NCHW, eager, 1 stream)", "torchvision", "fp16", False, False, False)
FASTPNR_ROWS = [
    Row("fastpnr gpu loader, bf16 channels_last, eager, 1 stream", "gpu", "bf16", True, False, False),
    Row("fastpnr gpu loader, bf16 channels_last, eager, 2 streams", "gpu", "bf16", True, False, True),
    Row("fastpnr gpu loader, bf16 channels_last, graph, 1 stream", "gpu", "bf16", True, True, False),
    Row("fastpnr gpu loader, bf16 channels_last, graph, 2 streams", "gpu", "bf16", True, True, True),
]


_ARGV: list[str] = []  # the command line, for the header (set by ``cli``)


def quiet(*_a, **_k):
    pass


def load_train_set(data_dir=None, image_size=None):
    from fastpnr.data import load_dataset

    return load_dataset("cifar10", "train", data_dir, image_size=image_size)


def build_setup(row: Row, train_set, device: torch.device, batch_size: int, method_name="simclr",
                regularizer_name="pnr", workers: int = 4, seed: int = 0, log=quiet, quick: bool = False):
    """(trainer, loader) for one row: fresh model, frozen model active, LARS, the row's loader and step options."""
    from fastpnr.config import build_config
    from fastpnr.methods import build_method
    from fastpnr.optim import build_optimizer, set_lr
    from fastpnr.regularizers import build_regularizer
    from fastpnr.trainer import Trainer
    from loaders import cifar_views, make_loader

    precision = row.precision
    if device.type != "cuda" and precision in ("fp16", "bf16"):
        precision = "fp32"  # fp16 needs CUDA; bf16 convolutions on a CPU only measure the CPU's bf16 support
    overrides = {"method": method_name, "regularizer": regularizer_name, "optim.batch_size": batch_size,
                 "train.precision": precision, "train.cuda_graph": row.cuda_graph, "train.frozen_stream": row.two_streams,
                 "train.online_probe": "task", "model.channels_last": row.channels_last, "train.device": str(device)}
    if quick:
        overrides.update({"method.proj_hidden": 64, "method.proj_out": 32, "regularizer.distill_hidden": 32})
    cfg = build_config("smoke", overrides)
    torch.manual_seed(seed)
    method = build_method(cfg.method, cfg.model, num_classes=len(train_set.classes))
    reg = build_regularizer(cfg.regularizer, method)
    fmt = torch.channels_last if row.channels_last else torch.contiguous_format
    method.to(device, memory_format=fmt)
    reg.to(device, memory_format=fmt)
    reg.begin_task(method, 0)
    reg.begin_task(method, 1)  # the frozen previous model is active: its forward runs every step
    opt = build_optimizer(method.param_groups(cfg.optim) + reg.param_groups(cfg.optim), cfg.optim)
    set_lr(opt, 0, cfg.optim.epochs, cfg.optim)
    trainer = Trainer(method, reg, opt, cfg.train, device, log=log)
    size = train_set.images.shape[1]
    kw = {"num_workers": workers, "pin_memory": device.type == "cuda"} if row.loader == "torchvision" else {}
    loader = make_loader(row.loader, train_set, batch_size=batch_size, num_views=2, device=device, seed=seed,
                         view_configs=cifar_views(size, mean=train_set.mean, std=train_set.std), **kw)
    return trainer, loader


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
    it = batches(loader, nchw)
    total = warmup + steps
    for i in range(total):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        views, labels = next(it)
        logs = trainer.run_step(views, labels, (None, labels), i, total)
    _sync(device)
    elapsed = time.perf_counter() - start
    loss = float(logs["loss"])
    if loss != loss:
        raise RuntimeError(f"non-finite loss in the benchmark ({loss})")
    return steps * labels.shape[0] / elapsed


def _as_list(value) -> list:
    """fire turns "a,b" into a tuple and "1" into an int; accept those and plain comma-separated strings."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _reference_available() -> str | None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return "skipped: torchvision not installed"
    return None


def main(device="cuda", quick=False, batch_size=256, steps=50, warmup=10, data_dir=None, methods="simclr",
         regularizer="pnr", workers=4, image_size=None, rows="all"):
    """Run the reference and fastpnr rows; print a header, img/s per row and each row's ratio to the reference.

    rows: "all", or comma-separated indices into [reference, *fastpnr rows] (0 = reference).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
    if quick:
        batch_size, steps, warmup, image_size = min(batch_size, 8), min(steps, 2), min(warmup, 1), image_size or 16
        workers = min(workers, 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    method_names = [str(m) for m in _as_list(methods)]
    all_rows = [REFERENCE, *FASTPNR_ROWS]
    picked = all_rows if rows == "all" else [all_rows[int(i)] for i in _as_list(rows)]
    t0 = time.perf_counter()
    train_set = load_train_set(data_dir, image_size)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# fastpnr bench | device: {dev_name} | torch {torch.__version__} | command: fastpnr bench {' '.join(_ARGV or sys.argv[1:])}")
    print(f"# batch {batch_size} | {steps} timed steps after {warmup} warm-up | cifar10 train {len(train_set)} images "
          f"{train_set.images.shape[1]} px (loaded in {time.perf_counter() - t0:.1f}s) | {regularizer} frozen model active "
          f"| workers {workers}")
    if device.type != "cuda":
        print("# cpu: fp16/bf16 rows run in fp32, CUDA graphs and side streams fall back to eager (a smoke test, not a speed figure)")
    for method_name in method_names:
        results = []
        print(f"\n## {method_name} + {regularizer}")
        print(f"{'configuration':<64} | {'img/s':>9} | ratio")
        for row in picked:
            skip = _reference_available() if row.loader == "torchvision" else None
            if skip is None:
                notes = []
                try:
                    trainer, loader = build_setup(row, train_set, device, batch_size, method_name, regularizer, workers,
                                                  log=lambda line, n=notes: n.append(line), quick=quick)
                    ips = time_row(trainer, loader, device, steps, warmup, nchw=not row.channels_last)
                    if trainer.graph is not None and trainer.graph.reason is not None and device.type == "cuda":
                        notes.append(f"graph fell back to eager: {trainer.graph.reason}")
                except Exception as e:  # one failing row must not hide the others
                    skip = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                finally:
                    trainer = loader = None
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            results.append((row, None if skip else ips, skip, notes if not skip else []))
            _print_row(results, row)
        _print_summary(results)


def _baseline(results):
    ref = next((r for r in results if r[0] is REFERENCE), None)
    if ref is not None and ref[1] is not None:
        return ref[1], "the reference"
    first = next((r for r in results if r[1] is not None), None)
    return (first[1], f"the first fastpnr row ({first[0].name}), the reference being skipped") if first else (None, "")


def _print_row(results, row):
    r = results[-1]
    if r[1] is None:
        print(f"{row.name:<64} | {'-':>9} | {r[2]}")
        return
    base, _ = _baseline(results)
    ratio = f"{r[1] / base:.2f}x" if base else "-"
    print(f"{row.name:<64} | {r[1]:>9.0f} | {ratio}")
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
    import fire

    _ARGV[:] = list(argv)
    fire.Fire(main, command=argv, name="fastpnr bench")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
