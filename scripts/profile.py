"""torch.profiler trace of training steps (the bench's fastpnr setup), for TensorBoard, plus a top-kernel table.

The profiler records a scheduled window, ``schedule(wait, warmup, active)``: ``wait`` steps ignored, ``warmup``
steps traced but dropped, ``active`` steps kept. ``tensorboard_trace_handler(out_dir)`` writes the trace there;
open it with ``tensorboard --logdir <out_dir>`` (PyTorch Profiler tab, package torch-tb-profiler). Graph capture
(``--cuda_graph``, on by default) happens before the window; a replayed graph shows as one launch on the CPU side
and its kernels on the GPU side.

The printed table lists the top kernels by self device time (CUDA) or the top operators by self CPU time (CPU),
then the share of the window in which the GPU ran no kernel: 1 - (union of kernel intervals) / (window length),
from the trace's kernel events. On CPU there is no GPU, so the idle share is not measurable.

    fastpnr profile                                  # CUDA, batch 256, out_dir=profile/
    fastpnr profile --device cpu --quick --out_dir /tmp/prof
"""
from __future__ import annotations

import dataclasses
import gc
import os
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    # Run as a file, scripts/ leads sys.path, and its profile.py would shadow the stdlib ``profile`` that
    # cProfile (imported by torch) needs: put the repository root there instead.
    _root = Path(__file__).resolve().parents[1]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(_root / "scripts")]
    sys.path.insert(0, str(_root))

import torch

if __package__:
    from .bench import FASTPNR_ROWS, QUICK_IMAGES, BenchData, batches, build_setup, load_train_set, missing
else:  # run as a file (the guard above put the repository root on sys.path)
    from scripts.bench import FASTPNR_ROWS, QUICK_IMAGES, BenchData, batches, build_setup, load_train_set, missing


def gpu_idle_share(events) -> tuple[float, float] | None:
    """(idle share, window ms) from kernel events' [start, end) intervals; None when there are none."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    if not spans:
        return None
    busy, cur_start, cur_end = 0.0, *spans[0]
    for s, e in spans[1:]:
        if s > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    busy += cur_end - cur_start
    window = spans[-1][1] - spans[0][0]
    return (1.0 - busy / window if window > 0 else 0.0), window / 1000.0


def main(device="cuda", quick=False, batch_size=256, wait=2, warmup=3, active=5, out_dir="profile", data_dir=None,
         method="simclr", regularizer="pnr", cuda_graph=True, two_streams=True, row_limit=15, image_size=None,
         loader="gpu"):
    """Profile ``active`` steps of the fastpnr step (bf16 channels_last, the next batch prefetched on a side stream)
    and print the top kernels. loader: gpu (default), ffcv, dali or torchvision."""
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
    if quick:
        batch_size, wait, warmup, active, image_size = min(batch_size, 8), 1, 1, 1, image_size or 16
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    from fastpnr.errors import require

    kinds = sorted({r.loader for r in FASTPNR_ROWS})
    require(loader in kinds, "loader", loader, kinds)
    row = next((r for r in FASTPNR_ROWS if r.loader == "gpu" and r.cuda_graph == bool(cuda_graph)
                and r.two_streams == bool(two_streams)))
    row = dataclasses.replace(row, name=row.name.replace("gpu loader", f"{loader} loader"), loader=loader)
    why = missing(loader)
    if why is not None:
        raise SystemExit(f"error: loader {loader!r} {why}")
    train_set = load_train_set(data_dir, image_size, limit=QUICK_IMAGES if quick else None)
    notes = []
    tmp = tempfile.TemporaryDirectory(prefix="fastpnr-profile-") if quick else None
    data = BenchData(train_set, data_dir, subset=QUICK_IMAGES if quick else None,
                     beton_dir=tmp.name if tmp is not None else None)
    trainer, loader = build_setup(row, data, device, batch_size, method, regularizer, log=notes.append, quick=quick)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"# fastpnr profile | device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'} | "
          f"torch {torch.__version__} | {row.name} | batch {batch_size} | {method} + {regularizer}")
    for n in notes:
        print(f"# {n}")
    it = batches(loader, nchw=False)
    total = wait + warmup + active
    # Untimed steps first: graph capture (its warm-up does cuDNN autotuning) stays out of the window.
    pre = 1 if quick else 2
    for i in range(pre):
        views, labels = next(it)
        trainer.run_step(views, labels, (None, labels), i, total + pre)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=active),
                 on_trace_ready=tensorboard_trace_handler(str(out)), record_shapes=False) as prof:
        for i in range(total):
            views, labels = next(it)
            trainer.run_step(views, labels, (None, labels), i + pre, total + pre)
            prof.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    traces = sorted(out.glob("*.pt.trace.json"))
    print(f"# trace: {traces[-1] if traces else out} (tensorboard --logdir {out}, PyTorch Profiler tab)")
    if device.type == "cuda":
        key = "self_cuda_time_total" if _has_attr(prof, "self_cuda_time_total") else "self_device_time_total"
        print(f"top kernels by self CUDA time over {active} steps:")
    else:
        key = "self_cpu_time_total"
        print(f"top operators by self CPU time over {active} steps (no GPU: CPU time):")
    print(prof.key_averages().table(sort_by=key, row_limit=row_limit))
    if device.type == "cuda":
        idle = gpu_idle_share(prof.events())
        if idle is None:
            print("gpu idle share: no kernel events recorded")
        else:
            print(f"gpu idle share: {100 * idle[0]:.1f}% of {idle[1]:.1f} ms ({active} steps)")
    else:
        print("gpu idle share: not measurable on cpu (no GPU)")
    trainer = loader = None
    gc.collect()
    if tmp is not None:
        tmp.cleanup()


def _has_attr(prof, name: str) -> bool:
    avgs = prof.key_averages()
    return bool(len(avgs)) and hasattr(avgs[0], name)


def cli(argv):
    from fastpnr.cli import run_fire

    run_fire(main, argv, name="fastpnr profile")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
