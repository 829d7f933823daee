"""Loader throughput: img/s of each loader kind delivering TWO augmented views to the device, side by side in one run.

Views are the anchors' (anchors-methods.md §1.4, loaders/config.py): CIFAR views at 32 px for cifar10; 64 px for
tinyimagenet100 (the ImageNet recipe: CIFAR-style crop with blur p 1.0/0.1 and ImageNet statistics); a random
resized crop to 96 and to 112 (`imagenet_views`) for imagenette112, one row per size.

What each kind starts from (nothing of this is timed): `gpu` and `torchvision` the decoded uint8 images
(`load_dataset(..., decode=True)`); `ffcv` a `.beton` written once with `loaders.ffcv_ops.write_beton` into a
temporary folder (or `--beton-dir`, where an existing file of the right size is reused), raw pixels by default
(`--beton-format jpeg` for the JPEG decode path), crop="device"; `dali` the encoded bytes (`decode=False`).

Timing: `warmup` batches are consumed first (worker start-up, FFCV's numba compile, DALI's pipeline build, CUDA
kernels' first launch), then the device is synchronized (torch.cuda.synchronize on CUDA), the clock starts, `batches`
batches are consumed, the device is synchronized again and the clock stops: img/s = batches * batch_size / seconds.
Epochs are chained (set_epoch(e + 1)) when a split has fewer batches than warmup + batches, so a short split pays
its per-epoch costs (FFCV's epoch start, DALI's per-epoch pipeline rebuild) as training does.
The ratio column is img/s over the baseline's img/s on the same dataset and size: `torchvision` (the anchors' PIL
pipeline) when it is asked for and installed, else `gpu` (the header says which). A kind whose package is missing
or that fails gets one "skipped" row; the run goes on.

    fastpnr bench_loaders                                              # CUDA, all datasets, all kinds
    fastpnr bench_loaders --device cpu --kinds gpu,ffcv,dali --batches 20 --num-workers 2 --out bench.csv
    fastpnr bench_loaders --device cpu --quick                         # seconds: cifar10 test split, tiny counts
    fastpnr bench_loaders --device cpu --quick --threads 1             # ... on a loaded 2-core machine
"""
from __future__ import annotations

import csv
import datetime
import gc
import importlib.util
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: scripts/ is on sys.path, not the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fastpnr.errors import ConfigError, FastPNRError, require  # noqa: E402

ALL_KINDS = ("torchvision", "gpu", "ffcv", "dali")
# kind → the importable module its package provides (for the "not installed" row)
PACKAGES = {"torchvision": "torchvision", "ffcv": "ffcv", "dali": "nvidia.dali"}
INSTALL = {"torchvision": "pip install torchvision", "ffcv": "pip install ffcv==1.0.2",
           "dali": "pip install nvidia-dali-cuda130"}
BETON_FORMATS = ("raw", "jpeg")
DEFAULTS = {False: dict(datasets="cifar10,tinyimagenet100,imagenette112", batch_size=256, batches=30, warmup=5,
                        num_workers=4, split="train"),
            True: dict(datasets="cifar10", batch_size=64, batches=3, warmup=2, num_workers=2, split="test")}
_ARGV: list[str] | None = None  # the command line, when run through cli()


def _views_cifar10(ds):
    from loaders import cifar_views

    return [(32, cifar_views(32, mean=ds.mean, std=ds.std))]


def _views_tinyimagenet100(ds):
    from loaders import cifar_views

    return [(64, cifar_views(64, mean=ds.mean, std=ds.std, blur=(1.0, 0.1)))]


def _views_imagenette112(ds):
    from loaders import imagenet_views

    return [(s, imagenet_views(s, mean=ds.mean, std=ds.std)) for s in (96, 112)]


# dataset → (its ImageDataset → [(size, two ViewConfigs)]): one table row per size and kind
VIEWS = {"cifar10": _views_cifar10, "tinyimagenet100": _views_tinyimagenet100, "imagenette112": _views_imagenette112}


def _names(value, allowed, field: str) -> list[str]:
    """A comma-separated string (or fire's tuple) of names, each in `allowed`, de-duplicated in order."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    require(items is not None, field, value, f"comma-separated names from {list(allowed)}")
    items = [str(s).strip() for s in items if str(s).strip()]
    require(len(items) > 0, field, value, f"comma-separated names from {list(allowed)}")
    for s in items:
        require(s in allowed, field, s, list(allowed))
    return list(dict.fromkeys(items))


def _positive_int(value, field: str, lo: int = 1) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= lo, field, value, f"an int >= {lo}")
    return value


def _device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is invalid; allowed: cpu, cuda, cuda:N") from None
    require(dev.type in ("cpu", "cuda"), "device", device, "cpu, cuda, cuda:N")
    if dev.type == "cuda":
        require(torch.cuda.is_available(), "device", device, "cpu (no CUDA device is available here)")
        dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({_cpu_name()}, {_cores()} cores)"


def _load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    msg = f"{type(e).__name__}: {msg}" if not isinstance(e, FastPNRError) else msg
    return msg if len(msg) <= 200 else msg[:197] + "..."


def missing_package(kind: str) -> str | None:
    """The package `kind` needs when it is not importable, else None."""
    pkg = PACKAGES.get(kind)
    if pkg is None:
        return None
    try:
        found = importlib.util.find_spec(pkg) is not None
    except (ImportError, ValueError):  # a parent package missing (nvidia) or broken
        found = False
    return None if found else pkg


def time_loader(loader, dev: torch.device, warmup: int, batches: int) -> tuple[float, int]:
    """(seconds, images) of `batches` batches after `warmup` untimed ones, device synchronized around the clock."""
    def stream():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            n = 0
            for item in loader:
                n += 1
                yield item
            if n == 0:
                raise FastPNRError("the loader yielded no batch (batch_size larger than the split?)")
            epoch += 1

    it = stream()
    try:
        for _ in range(warmup):
            views, _, _ = next(it)
        _sync(dev)
        t0 = time.perf_counter()
        images = 0
        for _ in range(batches):
            views, labels, _ = next(it)
            images += int(labels.shape[0])
        _sync(dev)
        seconds = time.perf_counter() - t0
    finally:
        it.close()  # lets the loader stop its threads/workers (FFCV's prefetch thread, DALI's pipeline)
    require(isinstance(views, list) and len(views) == 2 and views[0].device.type == dev.type, "loader output",
            f"{len(views)} views on {views[0].device}", f"2 views on {dev}")
    return seconds, images


class _Data:
    """One dataset's sources for every kind, loaded (and the `.beton` written) on first use."""

    def __init__(self, name, split, data_dir, beton_dir: Path, beton_format: str, writers: int):
        self.name, self.split, self.data_dir = name, split, data_dir
        self.beton_dir, self.beton_format, self.writers = beton_dir, beton_format, writers
        self._decoded = self._encoded = self._beton = None

    def decoded(self):
        return self._load(decode=True)

    def encoded(self):
        return self._load(decode=False)

    def _load(self, decode: bool):
        attr = "_decoded" if decode else "_encoded"
        if getattr(self, attr) is None:
            from fastpnr.data import load_dataset

            t = time.perf_counter()
            ds = load_dataset(self.name, self.split, self.data_dir, decode=decode)
            what = f"decoded: {ds.images.shape}" if decode else f"encoded: {len(ds)} images"
            _log(f"loaded {self.name}/{self.split} {what} in {time.perf_counter() - t:.1f} s")
            setattr(self, attr, ds)
        return getattr(self, attr)

    def beton(self) -> Path:
        if self._beton is None:
            from loaders.ffcv_ops import check_schema, write_beton

            ds = self.decoded()
            path = self.beton_dir / f"{self.name}_{self.split}_{self.beton_format}.beton"
            if path.is_file():
                try:
                    reader, _ = check_schema(path)
                    if int(reader.num_samples) == len(ds):
                        _log(f"reusing {path}")
                        self._beton = path
                        return path
                except FastPNRError:
                    pass
            t = time.perf_counter()
            write_beton(ds, path, image_format=self.beton_format, num_workers=self.writers)
            _log(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
            self._beton = path
        return self._beton

    def source(self, kind: str):
        return {"gpu": self.decoded, "torchvision": self.decoded, "ffcv": self.beton, "dali": self.encoded}[kind]()


def _log(msg: str) -> None:
    print(f"[bench_loaders] {msg}", file=sys.stderr, flush=True)


def _loader_kw(kind: str, num_workers: int, ffcv_crop: str) -> dict:
    if kind == "torchvision":
        return {"num_workers": num_workers}
    if kind == "ffcv":
        return {"num_workers": num_workers, "crop": ffcv_crop}
    if kind == "dali":
        return {"num_threads": num_workers}
    return {}


def bench_one(kind, source, views, batch_size, dev, warmup, batches, num_workers, ffcv_crop, seed=0) -> float:
    """img/s of one loader kind over `source` with the two `views`."""
    from loaders import make_loader

    loader = make_loader(kind, source, batch_size=batch_size, num_views=2, device=dev, seed=seed, shuffle=True,
                         drop_last=True, view_configs=views, **_loader_kw(kind, num_workers, ffcv_crop))
    try:
        seconds, images = time_loader(loader, dev, warmup, batches)
    finally:
        del loader
        gc.collect()
    return images / seconds


def run_benchmark(device="cuda", datasets=None, kinds=",".join(ALL_KINDS), batch_size=None, batches=None, warmup=None,
                  num_workers=None, data_dir=None, quick=False, split=None, beton_dir=None, beton_format="raw",
                  ffcv_crop="device", threads=None, command=None) -> dict:
    """Run the benchmark; returns {"header": {...}, "baseline": kind, "rows": [{dataset, size, kind, img_s, ratio,
    status}]} (img_s and ratio None on skipped rows)."""
    from loaders.ffcv_loader import CROP_MODES

    require(isinstance(quick, bool), "quick", quick, "true or false")
    d = DEFAULTS[quick]
    datasets = d["datasets"] if datasets is None else datasets
    batch_size = _positive_int(d["batch_size"] if batch_size is None else batch_size, "batch_size")
    batches = _positive_int(d["batches"] if batches is None else batches, "batches")
    warmup = _positive_int(d["warmup"] if warmup is None else warmup, "warmup")  # >= 1: FFCV compiles in batch 1
    num_workers = _positive_int(d["num_workers"] if num_workers is None else num_workers, "num_workers")
    split = d["split"] if split is None else str(split)
    names = _names(datasets, VIEWS, "datasets")
    kinds = _names(kinds, ALL_KINDS, "kinds")
    require(beton_format in BETON_FORMATS, "beton_format", beton_format, BETON_FORMATS)
    require(ffcv_crop in CROP_MODES, "ffcv_crop", ffcv_crop, CROP_MODES)
    dev = _device(device)
    require(threads is None or (isinstance(threads, int) and threads >= 1), "threads", threads, "None or an int >= 1")
    threads_before = torch.get_num_threads()
    threads = threads_before if threads is None else threads

    missing = {k: missing_package(k) for k in kinds}
    baseline = "torchvision" if "torchvision" in kinds and not missing["torchvision"] else "gpu"
    if baseline == "torchvision":
        against = "torchvision (the anchors' PIL pipeline)"
    elif "torchvision" in kinds:
        against = "gpu (torchvision is not installed)"
    else:
        against = "gpu (torchvision not asked for)"
    header = {
        "device": device_name(dev), "torch": torch.__version__, "command": command or "", "dataset_split": split,
        "batch_size": batch_size, "views": 2, "warmup_batches": warmup, "timed_batches": batches,
        "num_workers": num_workers, "torch_threads": threads, "beton_format": beton_format, "ffcv_crop": ffcv_crop,
        "ratio_vs": baseline,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "load_avg_start": _load_avg(),
    }
    lines = [
        "# fastpnr bench_loaders: img/s of each loader kind delivering 2 augmented views to the device",
        f"# device: {header['device']} | torch {header['torch']} | {header['date']}",
        f"# command: {header['command']}",
        f"# batch {batch_size}, {batches} timed batches after {warmup} warm-up, split {split}, num_workers {num_workers}"
        f" (torchvision workers / ffcv threads / dali threads), torch threads {threads},"
        f" ffcv .beton {beton_format} crop={ffcv_crop}",
        f"# ratio: img/s / img/s of {against} on the same dataset and size",
        f"# load average (1/5/15 min) at start: {header['load_avg_start']}",
    ]
    print("\n".join(lines), flush=True)

    rows = []
    tmp = None
    if beton_dir is None and "ffcv" in kinds and not missing["ffcv"]:
        tmp = tempfile.TemporaryDirectory(prefix="fastpnr-bench-beton-")
    bdir = Path(beton_dir) if beton_dir is not None else Path(tmp.name) if tmp is not None else None
    writers = max(1, min(num_workers, _cores()))
    try:
        for name in names:
            data = _Data(name, split, data_dir, bdir, beton_format, writers)
            try:
                sizes = VIEWS[name](data.encoded() if kinds == ["dali"] else data.decoded())
            except FastPNRError as e:  # the dataset itself is missing or unreadable: one row for it
                rows.append(dict(dataset=name, size=None, kind="all", img_s=None, ratio=None,
                                 status=f"skipped: {_one_line(e)}"))
                continue
            for size, views in sizes:
                group = []
                for kind in kinds:
                    row = dict(dataset=name, size=size, kind=kind, img_s=None, ratio=None, status="ok")
                    if missing[kind]:
                        row["status"] = f"skipped: not installed ({INSTALL[kind]})"
                    else:
                        _log(f"{name} {size} px: {kind} ...")
                        torch.set_num_threads(threads)
                        try:
                            row["img_s"] = bench_one(kind, data.source(kind), views, batch_size, dev, warmup, batches,
                                                     num_workers, ffcv_crop)
                        except Exception as e:  # noqa: BLE001 - any failure of one kind is one row, not a crash
                            row["status"] = f"skipped: {_one_line(e)}"
                        finally:
                            torch.set_num_threads(threads)  # FFCV sets torch's thread count on each epoch
                    group.append(row)
                base = next((r["img_s"] for r in group if r["kind"] == baseline and r["img_s"]), None)
                for r in group:
                    if r["img_s"] is not None and base:
                        r["ratio"] = r["img_s"] / base
                rows.extend(group)
            del data
            gc.collect()
    finally:
        torch.set_num_threads(threads_before)
        if tmp is not None:
            gc.collect()
            tmp.cleanup()
    header["load_avg_end"] = _load_avg()
    return {"header": header, "baseline": baseline, "rows": rows}


def format_table(rows) -> str:
    """The rows as a Markdown table `| dataset | size | kind | img/s | ratio |`."""
    cells = [("dataset", "size", "kind", "img/s", "ratio")]
    for r in rows:
        img_s = r["status"] if r["img_s"] is None else f"{r['img_s']:.0f}" if r["img_s"] >= 100 else f"{r['img_s']:.1f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        cells.append((r["dataset"], "-" if r["size"] is None else str(r["size"]), r["kind"], img_s, ratio))
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    fmt = lambda c: "| " + " | ".join(s.ljust(w) for s, w in zip(c, widths)) + " |"  # noqa: E731
    out = [fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join([*out, *(fmt(c) for c in cells[1:])])


def write_results(result: dict, out) -> Path:
    """`out` ending in .json: header + rows as JSON; otherwise CSV (header as leading `# key: value` lines)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(result, indent=2) + "\n")
        return path
    with path.open("w", newline="") as f:
        for k, v in result["header"].items():
            f.write(f"# {k}: {v}\n")
        w = csv.DictWriter(f, fieldnames=["dataset", "size", "kind", "img_s", "ratio", "status"])
        w.writeheader()
        for r in result["rows"]:
            w.writerow({**r, "img_s": "" if r["img_s"] is None else f"{r['img_s']:.1f}",
                        "ratio": "" if r["ratio"] is None else f"{r['ratio']:.3f}"})
    return path


def main(device="cuda", datasets=None, kinds=",".join(ALL_KINDS), batch_size=None, batches=None, warmup=None,
         num_workers=None, data_dir=None, quick=False, out=None, split=None, beton_dir=None, beton_format="raw",
         ffcv_crop="device", threads=None):
    """Benchmark the loader kinds side by side; prints a header and a `dataset | size | kind | img/s | ratio` table.

    device: cuda (default), cuda:N or cpu. datasets: comma-separated, from cifar10, tinyimagenet100, imagenette112
    (default all three). kinds: comma-separated, from torchvision, gpu, ffcv, dali (default all).
    batch_size (default 256), batches timed (default 30) after warmup batches (default 5, at least 1).
    num_workers: torchvision DataLoader workers, FFCV threads, DALI threads (default 4). split: default train.
    quick: defaults for a smoke test in seconds (cifar10 test split, batch 64, 3 batches after 2, 2 workers); values
    given explicitly still win. out: write the results, .json or else CSV. beton_dir: where the .beton files go
    (kept and reused; default a temporary folder). beton_format: raw or jpeg. ffcv_crop: device or decoder.
    threads: torch intra-op threads (the batched augmentation of gpu/ffcv on CPU; default torch's, restored after each
    kind because FFCV changes it). On a small CPU shared with other jobs, 1 avoids stalls of the 2-thread barriers.
    """
    if _ARGV is not None:
        command = shlex.join(_ARGV)
    else:
        args = dict(device=device, datasets=datasets, kinds=kinds, batch_size=batch_size, batches=batches,
                    warmup=warmup, num_workers=num_workers, data_dir=data_dir, quick=quick, out=out, split=split,
                    beton_dir=beton_dir, beton_format=beton_format, ffcv_crop=ffcv_crop, threads=threads)
        command = "bench_loaders.main(" + ", ".join(f"{k}={v!r}" for k, v in args.items() if v is not None) + ")"
    result = run_benchmark(device=device, datasets=datasets, kinds=kinds, batch_size=batch_size, batches=batches,
                           warmup=warmup, num_workers=num_workers, data_dir=data_dir, quick=quick, split=split,
                           beton_dir=beton_dir, beton_format=beton_format, ffcv_crop=ffcv_crop, threads=threads,
                           command=command)
    print(format_table(result["rows"]))
    print(f"# load average (1/5/15 min) at end: {result['header']['load_avg_end']}", flush=True)
    if out is not None:
        print(f"# wrote {write_results(result, out)}")


def cli(argv=None):
    """`fastpnr bench_loaders ...` (and `python scripts/bench_loaders.py ...`)."""
    global _ARGV
    from fastpnr.cli import run_fire

    argv = list(sys.argv[1:] if argv is None else argv)
    _ARGV = ["fastpnr", "bench_loaders", *argv]
    try:
        run_fire(main, argv, name="fastpnr bench_loaders")
    finally:
        _ARGV = None


if __name__ == "__main__":
    cli()
