"""Training throughput on 1, 2, ... processes under torchrun, at the same global batch: the scaling check.

    fastpnr bench_scaling --world_sizes 1,2,4,8                   # CUDA: one GPU per process, NCCL
    fastpnr bench_scaling --device cpu --quick --world_sizes 1,2  # gloo: a smoke test of the distributed step
    fastpnr bench_scaling --loader ffcv --world_sizes 1,8          # each rank decodes only its rows of a batch

Each world size W is one ``torchrun --standalone --nproc_per_node W`` launch of this command (PyTorch's launcher;
inside it, this script runs as one rank). Every launch trains the same configuration as ``fastpnr bench``'s
"<loader> loader, bf16 channels_last, graph, 2 streams" row (``--loader``, default gpu; SimCLR + PNR by default,
frozen model active), with the global batch ``batch_size`` split across the ranks exactly as ``fastpnr train``
splits it (sharded loader: each rank reads and decodes only its rows; global BatchNorm, gathered negatives,
averaged gradients). Rank 0 reports the global img/s (a barrier starts and stops the
clock on every rank) and the global batch's loss at the first and the last step.

Printed per world size: per-rank batch, img/s, speed-up over the first world size, efficiency (speed-up x first
W / W) and those losses: the same seed and global batches give the same first loss up to rounding (~1e-7 relative)
whatever W is (the equivalence ``tests/system/test_distributed.py`` proves; later steps drift further apart at the preset's
learning rate), so a differing first loss flags a broken distributed setup. On CPU the processes share the
machine's cores (torchrun gives each one thread): the wall times are a correctness smoke, not a scaling figure.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fastpnr.errors import FastPNRError, require

from .bench import FASTPNR_ROWS, QUICK_IMAGES, BenchData, _as_list, build_setup, load_train_set, missing, timed_steps

# loader kind -> bench's row with that loader, the CUDA graph and two streams
ROWS = {r.loader: r for r in FASTPNR_ROWS if r.cuda_graph and r.two_streams and r.compile == "off"}


def _flags(**kw) -> list[str]:
    return [f"--{k}={v}" for k, v in kw.items() if v is not None]


def main(world_sizes="1,2", device="cuda", quick=False, batch_size=256, steps=50, warmup=10, data_dir=None,
         method="simclr", regularizer="pnr", loader="gpu", workers=4, image_size=None, timeout_s=1800, result=None,
         beton_dir=None):
    """Launch one torchrun per world size and print the scaling table (see the module docstring).

    world_sizes: comma-separated process counts (each must divide batch_size; on CUDA at most the visible GPUs).
    quick: batch 8, 16 px, 2 timed steps after 1, the first 512 images, 1 worker (seconds per launch on CPU).
    loader: gpu, ffcv, dali or torchvision; workers: each rank's loader threads/processes (as in fastpnr bench).
    timeout_s: the limit of one launch. result, beton_dir: internal (rank 0's figures file; --quick's .beton folder).
    """
    from fastpnr.system import distributed

    if quick:
        batch_size, steps, warmup, image_size = min(batch_size, 8), min(steps, 2), min(warmup, 1), image_size or 16
        workers = min(workers, 1)
    if distributed.torchrun_env() is not None:  # one rank of a launch below
        return _rank(device, quick, batch_size, steps, warmup, data_dir, method, regularizer, loader, workers,
                     image_size, result, beton_dir)
    require(loader in ROWS, "loader", loader, sorted(ROWS))
    require(isinstance(workers, int) and workers >= 1, "workers", workers, "an int >= 1")
    sizes = []
    for w in _as_list(world_sizes):
        require(str(w).isdigit() and int(w) >= 1, "world_sizes", world_sizes, "comma-separated ints >= 1, e.g. 1,2,4")
        sizes.append(int(w))
    for w in sizes:
        require(batch_size % w == 0, "batch_size", batch_size, f"a multiple of every world size (here {w})")
    require(device in ("cpu", "cuda"), "device", device, "cpu or cuda (under torchrun each rank takes its own GPU)")
    dev = torch.device(device)
    if dev.type == "cuda":
        visible = torch.cuda.device_count()
        require(max(sizes) <= visible, "world_sizes", world_sizes, f"at most {visible} (the CUDA devices visible)")
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"# fastpnr bench_scaling | device: {name} | torch {torch.__version__} | backend: "
          f"{'nccl' if dev.type == 'cuda' else 'gloo'}")
    print(f"# global batch {batch_size} | {steps} timed steps after {warmup} warm-up | {method} + {regularizer} "
          f"| {loader} loader (workers per rank: {workers}), graph, 2 streams (CPU: fp32, eager, 1 stream)")
    if dev.type != "cuda":
        print("# cpu: the processes share the cores (1 thread each under torchrun): a smoke test, not a scaling figure")
    print(f"{'world size':>10} | {'per-rank batch':>14} | {'img/s':>9} | {'speed-up':>8} | {'efficiency':>10} | "
          "loss: first step, last step")
    if missing(loader) is not None:
        print(f"{loader} loader {missing(loader)}")
        return
    with tempfile.TemporaryDirectory(prefix="fastpnr-scaling-") as tmp:
        # --quick: one small .beton for every launch, removed at the end; else bench's, in the decode cache
        args = dict(device=device, quick=quick, batch_size=batch_size, steps=steps, warmup=warmup, data_dir=data_dir,
                    method=method, regularizer=regularizer, loader=loader, workers=workers, image_size=image_size,
                    beton_dir=tmp if quick else None)
        _table(sizes, batch_size, args, timeout_s, cuda=dev.type == "cuda")


def _table(sizes, batch_size, args, timeout_s, cuda: bool):
    """One launch per world size, a row each as it finishes."""
    first = None
    for w in sizes:
        started = time.perf_counter()
        figures, why = _launch(w, args, timeout_s)
        if figures is None:
            print(f"{w:>10} | {batch_size // w:>14} | {'-':>9} | {'-':>8} | {'-':>10} | {why}")
            continue
        ips = figures["img_s"]
        first = first or (w, ips)
        speedup = ips / first[1]
        losses = ", ".join(f"{v:.7f}" for v in figures["losses"])
        print(f"{w:>10} | {batch_size // w:>14} | {ips:>9.0f} | {speedup:>7.2f}x | {speedup * first[0] / w:>9.0%} | "
              f"{losses}   ({time.perf_counter() - started:.0f} s with start-up)")
        for note in figures["notes"] if cuda else []:
            print(f"    ({note})")


def _launch(world_size: int, args: dict, timeout_s: float):
    """(rank 0's figures, None) from one torchrun launch, or (None, why it failed in one line)."""
    with tempfile.TemporaryDirectory(prefix="fastpnr-scaling-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world_size}",
               f"--log-dir={tmp}/torchrun", "-m", "fastpnr", "bench_scaling", *_flags(**args, result=result)]
        env = dict(os.environ)
        root = Path(__file__).resolve().parents[1]
        if (root / "fastpnr" / "__init__.py").is_file():  # a source checkout: the ranks import what this process does
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            return None, f"failed: the launch ran past timeout_s={timeout_s:g}"
        if out.returncode != 0 or not result.exists():
            lines = [ln for ln in (out.stderr + out.stdout).splitlines() if "Error" in ln or "error:" in ln]
            return None, f"failed (exit {out.returncode}): {(lines or ['no error line'])[-1].strip()[:160]}"
        return json.loads(result.read_text()), None


def _rank(device, quick, batch_size, steps, warmup, data_dir, method, regularizer, loader, workers, image_size, result,
          beton_dir):
    """One rank of a launch: build the row with the process group, time it, rank 0 writes the figures."""
    from fastpnr.system import distributed

    if result is None:
        raise FastPNRError("bench_scaling under torchrun is launched by `fastpnr bench_scaling` itself (--result)")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dist = distributed.from_env(dev)
    dev = getattr(dist, "device", dev)  # under NCCL: cuda:LOCAL_RANK
    try:
        with dist.main_first():  # rank 0 fills the decode cache, the others read it
            train_set = load_train_set(data_dir, image_size, limit=QUICK_IMAGES if quick else None)
        data = BenchData(train_set, data_dir, subset=QUICK_IMAGES if quick else None, beton_dir=beton_dir)
        with dist.main_first():  # rank 0 writes the .beton (ffcv) or reads the JPEG bytes (dali) first
            data.source(loader)
        notes = []
        trainer, batches = build_setup(ROWS[loader], data, dev, batch_size, method, regularizer, workers=workers,
                                       log=notes.append, quick=quick, dist=dist)
        ips, losses = timed_steps(trainer, batches, dev, steps, warmup, nchw=False)
        if trainer.graph is not None and trainer.graph.reason is not None and dev.type == "cuda":
            notes.append(f"graph fell back to eager: {trainer.graph.reason}")
        dist.main_only(Path(result).write_text)(json.dumps({"img_s": ips, "losses": losses, "notes": notes}))
    finally:
        distributed.shutdown()


def cli(argv):
    from fastpnr.cli import run_fire

    run_fire(main, argv, name="fastpnr bench_scaling")
