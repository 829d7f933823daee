"""The CPU table: the main job's training step (the smoke preset's model, batch and images, SimCLR + PNR with the
frozen model active) in every combination of precision x torch threads x OpenMP wait policy, on an idle machine and
beside 1 and 2 CPU-bound burner processes that this script starts and stops itself; img/s and ratios in one run.

Each cell is a fresh process (``OMP_WAIT_POLICY`` and ``OMP_NUM_THREADS`` are read when torch starts its pool), timed
after an untimed warm-up step; the 1-minute load average is printed beside every cell (it lags: a burner started
seconds ago shows in it only partly). The ratio column is each cell's img/s over the first cell of its group (same
burners). ``--end_to_end`` also times README's first command (``fastpnr train --preset smoke``) idle and beside two
burners, wall clock, decode cache warm.

    fastpnr bench_cpu                                   # the full table (~10 min on 2 cores)
    fastpnr bench_cpu --end_to_end                      # and the main job end to end, idle and beside 2 burners
    fastpnr bench_cpu --end_to_end --table false        # only the main job end to end
    fastpnr bench_cpu --precisions fp32 --threads 1,2 --burners 0 --steps 2   # one slice
    fastpnr bench_cpu --methods all --precisions fp32 --threads 1 --wait_policies passive --burners 0  # per method
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from fastpnr.system.cpu_threads import cores, load_average


def _as_list(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


class Burners:
    """``n`` CPU-bound processes (a Python busy loop each) for the duration of a ``with`` block."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        if self.n:
            time.sleep(2)  # running on their cores before the first cell starts
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()
        self.procs = []


def cell(precision: str, threads: int, steps: int, warmup: int, data_dir=None, method="simclr") -> dict:
    """One cell, in this process: img/s of the main job's step and its CPU seconds per step (warm-up included; the
    load inflates wall time, hardly CPU time), its OMP_WAIT_POLICY this process's."""
    import torch

    from scripts.bench import Row, build_setup, load_train_set, timed_steps
    from fastpnr.config import build_config

    torch.set_num_threads(threads)
    smoke = build_config("smoke", {"method": method})  # the method's own smoke sizes (heads, queue)
    train_set = load_train_set(data_dir, smoke.data.image_size)
    row = Row("cpu", "gpu", precision, True, False, False, prefetch=False)
    trainer, loader = build_setup(row, train_set, torch.device("cpu"), smoke.optim.batch_size, method, "pnr",
                                  workers=0, config_overrides={"train.precision": precision})
    cpu0 = time.process_time()
    ips, losses = timed_steps(trainer, loader, torch.device("cpu"), steps, warmup, nchw=False)
    cpu_per_step = (time.process_time() - cpu0) / (steps + warmup)  # CPU seconds: what the load does not inflate
    return {"img_s": ips, "batch": smoke.optim.batch_size, "losses": losses, "cpu_s": cpu_per_step}


def _run_cell(precision, threads, policy, steps, warmup, data_dir, method, timeout_s) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY=policy.upper(), OMP_NUM_THREADS=str(threads))
    args = [sys.executable, "-m", "fastpnr", "bench_cpu", "--cell", f"{precision},{threads}", "--steps", str(steps),
            "--warmup", str(warmup), "--method", method] + (["--data_dir", str(data_dir)] if data_dir else [])
    load = load_average()
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout_s} s", "load": load}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:100]}", "load": load}
    return {**json.loads(lines[-1]), "load": load}


def _end_to_end(burners: int, timeout_s: int) -> tuple[float | None, float, float]:
    """(wall seconds of ``fastpnr train --preset smoke`` or None past ``timeout_s``, load before, load after)."""
    with tempfile.TemporaryDirectory(prefix="fastpnr-bench-cpu-") as tmp, Burners(burners):
        before = load_average()
        t0 = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "fastpnr", "train", "--preset", "smoke", "--out",
                                   os.path.join(tmp, "smoke"), "--train.progress", "false"],
                                  capture_output=True, text=True, timeout=timeout_s)
            wall = time.perf_counter() - t0 if done.returncode == 0 else None
            if done.returncode == 0:
                for line in done.stdout.splitlines():
                    if line.startswith(("precision:", "threads:", "random-init", "final")):
                        print(f"    {line}")
            else:
                print(f"    failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:160]}")
        except subprocess.TimeoutExpired:
            wall = None
        return wall, before, load_average()


def main(precisions="fp32,bf16", threads="1,2", wait_policies="active,passive", burners="0,1,2", steps=3, warmup=1,
         methods="simclr", data_dir=None, end_to_end=False, table=True, timeout_s=600, cell=None, method="simclr"):
    """Print the CPU table (module docstring); ``--end_to_end``: then the main job's wall time idle and beside 2
    burners (``--table false``: only that). methods: comma-separated, each with its smoke sizes ("all": every method; the ratio column then
    compares each with the first, simclr). cell, method: internal (one cell in this process, one JSON line)."""
    if cell is not None:
        precision, n = _as_list(cell)
        print(json.dumps(globals()["cell"](precision, int(n), int(steps), int(warmup), data_dir, method)))
        return
    from fastpnr.methods import METHODS

    names = list(METHODS) if methods == "all" else _as_list(methods)
    import torch

    from fastpnr.config import build_config
    from fastpnr.system.precision import native_cpu_bf16, resolve_precision

    smoke = build_config("smoke", {"method": names[0]})
    auto = resolve_precision("auto", torch.device("cpu"))
    print(f"# fastpnr bench_cpu | torch {torch.__version__} | cpu capability {torch.backends.cpu.get_cpu_capability()}"
          f" | native bf16: {native_cpu_bf16() or 'none'} | precision auto -> {auto[0]} | {cores()} cores"
          f" | command: fastpnr bench_cpu {' '.join(sys.argv[2:])}")
    print(f"# the main job's step: smoke preset, {','.join(names)} + pnr (frozen model active), ResNet-18 width "
          f"{smoke.model.width}, {smoke.data.image_size or 32} px, batch {smoke.optim.batch_size}; {steps} timed steps "
          f"after {warmup}; load = 1-minute load average when the cell started")
    print(f"{'beside':>9} | {'method':>11} | {'precision':>9} | {'threads':>7} | {'wait':>7} | {'img/s':>7} | "
          f"{'s/step':>7} | {'cpu s':>6} | {'ratio':>6} | load")
    table = str(table).lower() not in ("false", "0", "no", "off")  # fire passes --table false as a string
    for n in [int(b) for b in _as_list(burners)] if table else []:
        with Burners(n):
            first = None
            for method in names:
                for precision in _as_list(precisions):
                    for t in [int(x) for x in _as_list(threads)]:
                        for policy in _as_list(wait_policies):
                            r = _run_cell(precision, t, policy, steps, warmup, data_dir, method, timeout_s)
                            head = (f"{f'{n} burner' + 's' * (n != 1):>9} | {method:>11} | "
                                    f"{precision:>9} | {t:>7} | {policy:>7}")
                            if "error" in r:
                                print(f"{head} | {'-':>7} | {'-':>7} | {'-':>6} | {'-':>6} | {r['load']:.1f}  "
                                      f"({r['error']})", flush=True)
                                continue
                            first = first or r["img_s"]
                            print(f"{head} | {r['img_s']:>7.1f} | {r['batch'] / r['img_s']:>7.2f} | "
                                  f"{r['cpu_s']:>6.2f} | {r['img_s'] / first:>5.2f}x | {r['load']:.1f}", flush=True)
    if end_to_end:
        print("\n# the main job end to end: fastpnr train --preset smoke (decode cache warm), wall clock")
        for n in (0, 2):
            wall, before, after = _end_to_end(n, timeout_s)
            where = f"beside {n} burners"
            shown = f"{wall:.1f} s" if wall is not None else f"not done in {timeout_s} s"
            print(f"{where}: {shown} (load average {before:.1f} at start, {after:.1f} at the end)", flush=True)


def cli(argv):
    from fastpnr.cli import run_fire

    run_fire(main, argv, name="fastpnr bench_cpu")


if __name__ == "__main__":
    cli(sys.argv[1:])
