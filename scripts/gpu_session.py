"""The GPU session in ONE device call of at most 9 minutes: every step time-boxed, the most important evidence first.

    bash scripts/gpu_session.sh prepare [--dali] [--dry-run]   # here: fill .carry/ (wheels + CIFAR-10), print the call
    bash scripts/gpu_session.sh run                            # there: the steps below, logs + summary.json in $OUT
    bash scripts/gpu_session.sh --dry-run                      # the plan: steps, commands, time boxes (runs nothing)
    bash scripts/gpu_session.sh run --cpu --only env,kernels-bf16   # here: the same plumbing with CPU quick variants

Steps, in order (``plan()``): install the carried wheels; the environment; the CUDA-only tests (graph capture, side
stream, prefetch, the kernel in fp32/TF32/bf16 against the float64 reference); ``fastpnr bench`` at batch 256 (the
anchors' row, the gpu loader eager/graph x 1/2 streams, ffcv, dali, torchvision); the kernel at the SimCLR-PNR and
MoCo-PNR sizes against eager PyTorch in bf16 and TF32; 195 real training steps of ``fastpnr train --preset
cifar10-5t`` (first task, 5 epochs); ``fastpnr bench_vit``: the ViT-Small/8 MoCo v3 + PNR step (64 px, bf16, batch 256)
in img/s with flash, memory-efficient and math attention; then, only if time is left, the kernel against torch.compile,
lightly's SimCLR step against fastpnr's (``scripts/bench_peers.py``, where lightly is installed) and DALI's two views at
96/112 px (needs DALI's wheels already on the machine: at 256 MiB they do not fit in one call's carry).

Every step runs under its time box in its own process group (killed with it); a global deadline (``BUDGET_S``)
skips an optional step whose box no longer fits and cuts the others short. Each step's outcome (ok, failed,
timed out, skipped; seconds; log tail) is written to ``$OUT/summary.json`` after every step, so a call killed from
outside still returns what ran. At most ``MAX_OUT_FILES`` files go to ``$OUT`` (one log per step group + summary).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 540            # the script's wall clock: 9 minutes, so a rerun still fits the session's device time
MAX_OUT_FILES = 8         # the device tool returns at most 8 files from $OUT
MAX_CARRY_MIB = 60        # one call carries at most 64 MiB (working tree included)
RUN_TIMEOUT_S = 580       # the device call's timeout_s: the budget + start-up and kill grace
KILL_GRACE_S = 3          # SIGTERM, then SIGKILL this much later
CPU_SCALE = 5             # --cpu: boxes and budget x5 (a shared 2-core machine imports torch in 5-15 s)
CARRY = ROOT / ".carry"
SITE = "/tmp/site"        # where the carried wheels are installed (PYTHONPATH), as the device README does
DALI_STAGED = "/root/dali/w"  # DEPS.md's split transfer leaves DALI's wheel set here on a warm machine
# The cp312 wheels this call needs (../shared/wheels/cp312): ffcv and its pure-Python needs that the image lacks, and
# fire (every fastpnr CLI) with termcolor. torch-tb-profiler stays here: no profiler step in this call.
WHEELS = ("ffcv-", "fastargs-", "assertpy-", "pytorch_pfn_extras-", "terminaltables-", "fire-", "termcolor-")
DALI_IMAGES = 4096        # prepare --dali: Imagenette-112 train images carried (16 batches of 256: one epoch)

# The CUDA-only tests: graph capture, side stream, prefetch, host-sync-free loaders, the kernel vs float64 in
# fp32 (3xTF32), TF32 and bf16 (test_infonce's *_on_cuda and triton_matches cases run on the GPU there).
TEST_FILES = ("tests/kernels/test_infonce.py", "tests/train/test_graph_step.py", "tests/loaders/test_prefetch.py",
              "tests/loaders/test_gpu_resident.py", "tests/loaders/test_gpu_aug.py")
TEST_SELECT = "cuda or triton_matches"
# fastpnr train: the cifar10-5t preset as shipped, first task only (2 classes, 10,000 images, 39 steps of 256 per
# epoch), 5 epochs = 195 steps, then the preset's evaluation (linear probe, kNN, online probe; random-init first).
TRAIN_OVERRIDES = {"train.max_tasks": 1, "optim.epochs": 5, "optim.warmup_epochs": 1, "train.progress": False}
TRAIN_CPU_OVERRIDES = {"data.image_size": 16, "data.train_fraction": 0.02, "data.test_fraction": 0.01,
                       "eval.train_fraction": 0.004, "optim.batch_size": 16, "train.steps_per_epoch": 2,
                       "eval.linear_epochs": 2, "method.proj_hidden": 64, "method.proj_out": 32,
                       "regularizer.distill_hidden": 32, "train.device": "cpu", "optim.epochs": 2,
                       "train.threads": 1}  # one thread: 2-thread barriers stall on a shared 2-core machine
KERNEL_SIZES = "small,wide"  # bench_kernels' SimCLR-PNR (512 x 2 x 512) and MoCo-PNR (256 x 2 x 65,536) cases
# (torch.compile, default mode, only at the MoCo-PNR size: each shape is a fresh compile of forward and backward)


@dataclasses.dataclass(frozen=True)
class Step:
    """One time-boxed command; ``cpu`` is its quick CPU variant (plumbing tests), ``needs`` a module it requires."""
    name: str
    box: int                  # seconds at most (the kill comes at the box, or at the global deadline if sooner)
    log: str                  # file under $OUT (steps of one group append to the same file)
    gpu: tuple
    cpu: tuple
    optional: bool = False    # run only when the whole box still fits before the deadline
    needs: str | None = None  # importable module, else "skipped"
    needs_path: str | None = None  # a carried path the GPU variant reads, else "skipped"


def _flags(overrides: dict) -> list[str]:
    return [x for k, v in overrides.items() for x in (f"--{k}", str(v))]


def plan(py: str = "python3", work: str = "/tmp/fastpnr-gpu-session") -> list[Step]:
    """The session's steps in priority order; their boxes sum to at most ``BUDGET_S``."""
    fp = (py, "-m", "fastpnr")
    wheels = f"{CARRY.name}/wheels/*.whl"  # prepare copies only the WHEELS
    pip = f"{py} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target {SITE}"
    install = (f"set -e; {pip} {wheels}; if ls {DALI_STAGED}/*.whl >/dev/null 2>&1; then {pip} {DALI_STAGED}/*.whl; "
               f"echo 'installed the DALI wheel set staged in {DALI_STAGED}'; fi; ls {SITE}")
    pytest = (py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *TEST_FILES, "-k", TEST_SELECT)
    kernels = (*fp, "bench_kernels", f"--sizes={KERNEL_SIZES}", "--iters=30")
    kernels_cpu = (*fp, "bench_kernels", "--device=cpu", "--quick", "--compile=False")
    train = (*fp, "train", "--preset", "cifar10-5t", "--out", f"{work}/train")
    return [
        Step("install", 20, "env.log", ("bash", "-c", install), (py, "-m", "pip", "--version")),
        Step("env", 20, "env.log", (py, "-m", "scripts.gpu_session", "env"),
             (py, "-m", "scripts.gpu_session", "env", "--cpu")),
        Step("tests", 90, "tests.log", pytest, (*pytest[:-2], "--collect-only", "-k", TEST_SELECT)),
        Step("bench", 120, "bench.log", (*fp, "bench", "--device", "cuda", "--batch_size", "256", "--steps", "50",
                                         "--warmup", "10"),
             (*fp, "bench", "--device", "cpu", "--quick", "--rows", "0,1")),
        Step("kernels-bf16", 40, "kernels.log", (*kernels, "--dtype=bfloat16", "--compile=False"), kernels_cpu),
        Step("kernels-tf32", 40, "kernels.log", (*kernels, "--dtype=float32", "--matmul_precision=high",
                                                 "--compile=False"),
             (*kernels_cpu, "--matmul_precision=high")),
        Step("train", 90, "train.log", (*train, *_flags({**TRAIN_OVERRIDES, "train.device": "cuda"})),
             (*train, *_flags({**TRAIN_OVERRIDES, **TRAIN_CPU_OVERRIDES}))),
        Step("vit", 30, "bench.log", (*fp, "bench_vit", "--device", "cuda", "--batch_size", "256", "--steps", "30",
                                      "--warmup", "5"),
             (*fp, "bench_vit", "--device", "cpu", "--quick", "--backends", "flash,math")),
        Step("kernels-compile", 30, "kernels.log", (*fp, "bench_kernels", "--sizes=wide", "--iters=30",
                                                    "--dtype=bfloat16", "--compile=True"), kernels_cpu, optional=True),
        # lightly's SimCLR step against fastpnr's (scripts/bench_peers.py): only where lightly and torchvision are
        # installed (its venv's torch 2.14.1 + torchvision 0.29.1 + lightly are not carried: skipped otherwise)
        Step("peers", 30, "bench.log", (py, "scripts/bench_peers.py", "--device", "cuda", "--batch_size", "256",
                                        "--width", "64", "--image_size", "32", "--steps", "30", "--warmup", "5"),
             (py, "scripts/bench_peers.py", "--device", "cpu", "--batch_size", "16", "--steps", "1", "--warmup", "1",
              "--workers", "0"), optional=True, needs="lightly"),
        Step("dali", 30, "dali.log", (*fp, "bench_loaders", "--device", "cuda", "--datasets", "imagenette112",
                                      "--kinds", "gpu,dali", "--batches", "12", "--warmup", "3", "--num_workers", "8"),
             (*fp, "bench_loaders", "--device", "cpu", "--quick", "--kinds", "dali"), optional=True,
             needs="nvidia.dali", needs_path=f"{CARRY.name}/data/imagenette112"),
    ]


def out_files(steps) -> list[str]:
    return ["summary.json", *dict.fromkeys(s.log for s in steps)]


# ----------------------------------------------------------------------------------------------------- running
class Session:
    """Runs the plan against a global deadline and keeps ``summary.json`` current after every step."""

    def __init__(self, steps, out: Path, work: Path, budget: float, cpu: bool, env: dict):
        self.steps, self.out, self.work, self.budget, self.cpu, self.env = steps, out, work, budget, cpu, env
        self.start = time.monotonic()
        self.results: list[dict] = []
        self.child = None
        self.summary = {"mode": "cpu smoke (quick variants)" if cpu else "cuda", "budget_s": budget,
                        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": out_files(steps),
                        "plan": [{"name": s.name, "box_s": s.box, "optional": s.optional} for s in steps],
                        "steps": self.results}

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def run(self) -> dict:
        for name in out_files(self.steps):  # a local rerun into the same folder starts afresh ($OUT there is empty)
            (self.out / name).unlink(missing_ok=True)
        env_ok = True
        for step in self.steps:
            reason = self.skip_reason(step, env_ok)
            result = self.skipped(step, reason) if reason else self.execute(step)
            if step.name == "env" and result["status"] != "ok":
                env_ok = False
            if step.name == "train" and result["status"] == "ok":
                self.summary["train_metrics"] = _train_metrics(self.work / "train" / "metrics.json")
            self.results.append(result)
            self.write()
            _report(result)
        self.summary["elapsed_s"] = round(time.monotonic() - self.start, 1)
        self.write()
        return self.summary

    def skip_reason(self, step: Step, env_ok: bool) -> str | None:
        left = self.left() - KILL_GRACE_S
        if not env_ok and step.name != "install":
            return "the env step failed (no CUDA device?)"
        if step.optional and left < step.box:
            return f"not enough time left ({left:.0f} s < its box of {step.box} s)"
        if left < min(step.box, 10):
            return f"the global deadline is reached ({left:.0f} s left)"
        if step.needs and not _importable(step.needs, self.env):
            return (f"{step.needs} is not importable: DALI's wheel set (256 MiB) exceeds one call's carry; stage it "
                    f"in {DALI_STAGED} on the same warm machine first (shared/DEPS.md)")
        if step.needs_path and not self.cpu and not (ROOT / step.needs_path).exists():
            return f"{step.needs_path} was not carried (bash scripts/gpu_session.sh prepare --dali)"
        return None

    def skipped(self, step: Step, reason: str) -> dict:
        return {"name": step.name, "status": "skipped", "reason": reason, "seconds": 0.0, "box_s": step.box,
                "log": step.log}

    def execute(self, step: Step) -> dict:
        cmd = step.cpu if self.cpu else step.gpu
        limit = max(1.0, min(step.box, self.left() - KILL_GRACE_S))
        log = self.out / step.log
        with open(log, "a") as f:
            f.write(f"== {step.name} (box {step.box} s, limit {limit:.0f} s): {_shell(cmd)}\n")
            f.flush()
            t0 = time.monotonic()
            rc, timed_out = self.call(cmd, f, limit)
            seconds = round(time.monotonic() - t0, 1)
            status = "timed out" if timed_out else ("ok" if rc == 0 else "failed")
            f.write(f"\n== {step.name}: {status}, rc={rc}, {seconds} s\n")
        return {"name": step.name, "status": status, "rc": rc, "seconds": seconds, "box_s": step.box,
                "limit_s": round(limit), "log": step.log, "command": _shell(cmd), "tail": _tail(log, 25)}

    def call(self, cmd, f, limit: float) -> tuple[int | None, bool]:
        """Run ``cmd`` in its own process group; on timeout TERM the whole group, KILL it after the grace."""
        self.child = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return self.child.wait(timeout=limit), False
        except subprocess.TimeoutExpired:
            _kill_group(self.child)
            return self.child.returncode, True
        finally:
            self.child = None

    def interrupt(self, signum, _frame):
        """The call itself is being stopped: end the running step's group and leave a summary that says so."""
        if self.child is not None:
            _kill_group(self.child)
        self.summary["interrupted"] = f"signal {signum} after {time.monotonic() - self.start:.0f} s"
        self.write()
        sys.exit(128 + signum)

    def write(self) -> None:
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2))
        os.replace(tmp, self.out / "summary.json")


def _kill_group(child) -> None:
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _importable(module: str, env: dict) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module.split('.')[0]!r}) is None " \
           f"or importlib.util.find_spec({module!r}) is None)"
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _train_metrics(path: Path) -> dict | str:
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"no metrics.json: {e}"
    keys = ("accuracy_matrix", "test_accuracy", "test_accuracy_by_protocol", "images_per_second", "task_time_s",
            "eval_time_s", "random_init_accuracy", "num_tasks", "protocol")
    return {k: m[k] for k in keys if k in m}


def _tail(path: Path, n: int) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line[-300:] for line in lines[-n:]]


def _shell(cmd) -> str:
    return shlex.join(cmd)


def _report(result: dict) -> None:
    extra = f" ({result['reason']})" if result["status"] == "skipped" else f" rc={result['rc']}"
    print(f"== {result['name']}: {result['status']} in {result['seconds']} s (box {result['box_s']} s){extra}",
          flush=True)
    for line in (result.get("tail") or [])[-10:]:
        print(f"   {line}", flush=True)


def _step_env(out: Path, work: Path, cpu: bool) -> dict:
    env = dict(os.environ)
    paths = [str(ROOT), SITE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(PYTHONPATH=":".join(paths), PYTHONUNBUFFERED="1", OUT=str(out))
    data = CARRY / "data"
    if not cpu or "FASTPNR_DATA" not in env:
        if data.is_dir():
            env["FASTPNR_DATA"] = str(data)
    if not cpu or "FASTPNR_CACHE" not in env:
        env["FASTPNR_CACHE"] = str(work / "cache")
    return env


def run_session(args) -> int:
    cpu = args.cpu or os.environ.get("GPU_SESSION_CPU") == "1"
    work = Path(os.environ.get("GPU_SESSION_WORK") or (ROOT / "runs" / "gpu-session-work" if cpu
                                                       else "/tmp/fastpnr-gpu-session"))
    steps = _select(plan(sys.executable if cpu else "python3", str(work)), args.only)
    budget = args.budget or float(os.environ.get("GPU_SESSION_BUDGET") or BUDGET_S * (CPU_SCALE if cpu else 1))
    if cpu:
        steps = [dataclasses.replace(s, box=s.box * CPU_SCALE) for s in steps]
    if args.dry_run:
        print_plan(steps, budget, cpu, as_json=args.json)
        return 0
    out = Path(os.environ.get("OUT") or ROOT / "runs" / "gpu-session")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    session = Session(steps, out, work, budget, cpu, _step_env(out, work, cpu))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, session.interrupt)
    summary = session.run()
    print_table(summary)
    files = [p.name for p in out.iterdir() if p.is_file() and not p.name.startswith(".")]
    if len(files) > MAX_OUT_FILES:
        print(f"warning: {len(files)} files in {out}, the device tool returns {MAX_OUT_FILES}: {sorted(files)}")
    return 0


def _select(steps, only):
    if not only:
        return steps
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in {s.name for s in steps}]
    if unknown:
        raise SystemExit(f"error: --only {unknown[0]} is invalid; allowed: {', '.join(s.name for s in steps)}")
    return [s for s in steps if s.name in names]


def print_plan(steps, budget: float, cpu: bool, as_json: bool = False) -> None:
    total = sum(s.box for s in steps)
    if as_json:
        print(json.dumps({"budget_s": budget, "total_box_s": total, "files": out_files(steps),
                          "steps": [dict(dataclasses.asdict(s), command=list(s.cpu if cpu else s.gpu))
                                    for s in steps]}, indent=2))
        return
    print(f"# gpu_session plan ({'cpu smoke' if cpu else 'cuda'}): {len(steps)} steps in order, time boxes sum "
          f"{total} s <= budget {budget:.0f} s (global deadline); optional steps run only if their box still fits")
    for i, s in enumerate(steps, 1):
        flag = "optional" if s.optional else "required"
        needs = f" [needs {s.needs}]" if s.needs else ""
        command = _shell(s.cpu if cpu else s.gpu)
        print(f"{i:>2}. {s.name:<16} {s.box:>4} s  {flag:<8} -> $OUT/{s.log:<12}{needs} {command}")
    files = out_files(steps)
    print(f"# files under $OUT: {' '.join(files)} ({len(files)} <= {MAX_OUT_FILES})")
    print(f"# device call: command 'bash scripts/gpu_session.sh run', carry ['{CARRY.name}'], "
          f"timeout_s {RUN_TIMEOUT_S}")


def print_table(summary: dict) -> None:
    print(f"\n# gpu_session summary ({summary['mode']}): {summary.get('elapsed_s')} s of {summary['budget_s']:.0f} s")
    print(f"{'step':<16} | {'status':<9} | {'seconds':>7} | {'box':>4} | note")
    for r in summary["steps"]:
        said = [line.strip() for line in r.get("tail", []) if line.strip() and not line.startswith("== ")]
        note = r.get("reason") or (said[-1][:90] if said else "")
        print(f"{r['name']:<16} | {r['status']:<9} | {r['seconds']:>7} | {r['box_s']:>4} | {note}")
    if isinstance(summary.get("train_metrics"), dict):
        m = summary["train_metrics"]
        print(f"train: test accuracy {m.get('test_accuracy')} | img/s {m.get('images_per_second')}")


# ----------------------------------------------------------------------------------------------------- env report
def env_report(cpu: bool) -> int:
    """Versions, the GPU, CUDA as torch sees it, the optional packages; exit 3 without CUDA (unless ``cpu``)."""
    print(f"date {time.strftime('%Y-%m-%dT%H:%M:%S%z')} | {platform.platform()} | python {platform.python_version()} "
          f"| {os.cpu_count()} CPUs")
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi"], timeout=30)
    import importlib.util

    import numpy
    import torch

    print(f"torch {torch.__version__} (cuda {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}) "
          f"| numpy {numpy.__version__}")
    for name in ("triton", "torchvision", "ffcv", "fire", "nvidia.dali", "numba", "cv2", "tensorboard"):
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        version = "-"
        if found:
            try:
                version = getattr(__import__(name, fromlist=["_"]), "__version__", "?")
            except Exception as e:  # a package that is there but broken is a finding, not a crash
                version = f"import failed: {type(e).__name__}: {e}"
        print(f"  {name}: {version if found else 'not installed'}")
    if not torch.cuda.is_available():
        print("CUDA: not available")
        return 0 if cpu else 3
    p = torch.cuda.get_device_properties(0)
    print(f"CUDA: {torch.cuda.get_device_name(0)}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.1f} GiB")
    return 0


# ----------------------------------------------------------------------------------------------------- prepare
def find_shared(arg: str | None) -> Path:
    candidates = [arg, os.environ.get("FASTPNR_SHARED"), ROOT.parent / "shared", ROOT.parent.parent / "shared"]
    for c in candidates:
        if c and (Path(c) / "wheels" / "cp312").is_dir():
            return Path(c)
    raise SystemExit(f"error: no shared/wheels/cp312 found (tried --shared, $FASTPNR_SHARED, {ROOT.parent / 'shared'}, "
                     f"{ROOT.parent.parent / 'shared'}); pass --shared DIR")


def carry_plan(shared: Path, dali: bool) -> list[tuple[Path, str]]:
    """(source, destination under .carry) of every file the call needs; the Imagenette subset is written, not copied."""
    wheels = sorted(shared.glob("wheels/cp312/*.whl"))
    picked = [w for w in wheels if w.name.startswith(WHEELS)]
    missing = [p for p in WHEELS if not any(w.name.startswith(p) for w in picked)]
    if missing:
        raise SystemExit(f"error: no wheel {missing[0]}* in {shared / 'wheels/cp312'}")
    files = [(w, f"wheels/{w.name}") for w in picked]
    # bench (train split) and train (train + test) read the whole CIFAR-10: 17.6 MiB, a second of transfer.
    files += [(shared / "data" / "cifar10" / f"{s}.tar.xz", f"data/cifar10/{s}.tar.xz") for s in ("train", "test")]
    if dali:
        files.append((shared / "data" / "imagenette112" / "train.tar.xz", "data/imagenette112/train.tar"))
    for src, _ in files:
        if not src.is_file():
            raise SystemExit(f"error: {src} not found")
    return files


def write_subset(src: Path, dst: Path, n: int) -> None:
    """The first ``n`` images of a class-sorted archive taken evenly across classes, as an uncompressed tar."""
    with tarfile.open(src, "r:*") as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        by_class: dict[str, list] = {}
        for m in members:
            by_class.setdefault(m.name.split("/")[-2], []).append(m)
        per_class = max(1, n // len(by_class))
        keep = [m for ms in by_class.values() for m in ms[:per_class]]
        dst.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(dst, "w") as out:
            for m in keep:
                out.addfile(m, tf.extractfile(m))


def tree_bytes() -> int:
    """Bytes of what travels besides the carry: tracked and untracked-not-ignored files."""
    try:
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                               check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((ROOT / n.decode()).stat().st_size for n in names if n and (ROOT / n.decode()).is_file())


def prepare(args) -> int:
    shared = find_shared(args.shared)
    files = carry_plan(shared, args.dali)
    estimate = sum(s.stat().st_size for s, dst in files if not dst.endswith(".tar"))
    if args.dali:
        estimate += int(files[-1][0].stat().st_size * DALI_IMAGES / 9469)  # JPEG bytes barely compress
    mib = 2**20
    for src, dst in files:
        print(f"  {CARRY.name}/{dst:<78} <- {src}")
    if args.dry_run:
        print(f"# dry run: would write {CARRY} (about {estimate / mib:.1f} MiB)")
    else:
        shutil.rmtree(CARRY, ignore_errors=True)
        for src, dst in files:
            target = CARRY / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            if dst.endswith(".tar"):
                write_subset(src, target, DALI_IMAGES)
            else:
                shutil.copyfile(src, target)
        estimate = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    tree = tree_bytes()
    print(f"payload: {CARRY.name}/ {estimate / mib:.1f} MiB + working tree {tree / mib:.1f} MiB = "
          f"{(estimate + tree) / mib:.1f} MiB (limit {MAX_CARRY_MIB} MiB of the call's 64)")
    if estimate + tree > MAX_CARRY_MIB * mib:
        print(f"error: the payload exceeds {MAX_CARRY_MIB} MiB", file=sys.stderr)
        return 2
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{CARRY.name}/x"], cwd=ROOT).returncode == 0
    if not ignored:
        print(f"error: {CARRY.name}/ is not git-ignored: it would travel twice", file=sys.stderr)
        return 2
    print("device call (the run tool; run prepare in the checkout that the session's device calls send):")
    print(json.dumps({"command": "bash scripts/gpu_session.sh run", "carry": [CARRY.name],
                      "timeout_s": RUN_TIMEOUT_S}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bash scripts/gpu_session.sh", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prepare", help="fill .carry/ here (wheels + data) and print the device call")
    p.add_argument("--dry-run", action="store_true", help="list what would be carried; copy nothing")
    p.add_argument("--dali", action="store_true", help=f"also carry {DALI_IMAGES} Imagenette-112 images (DALI step)")
    p.add_argument("--shared", help="the shared folder (wheels/cp312, data/); default ../shared or ../../shared")
    r = sub.add_parser("run", help="run the steps (on the GPU machine; --cpu here)")
    r.add_argument("--dry-run", action="store_true", help="print the plan and the time boxes; run nothing")
    r.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    r.add_argument("--cpu", action="store_true", help="CPU quick variant of every step (also GPU_SESSION_CPU=1)")
    r.add_argument("--only", help="comma-separated step names, in plan order")
    r.add_argument("--budget", type=float, help=f"global deadline in seconds (default $GPU_SESSION_BUDGET, else "
                   f"{BUDGET_S}; x{CPU_SCALE} with --cpu, as every box)")
    e = sub.add_parser("env", help="the environment report (a step of run)")
    e.add_argument("--cpu", action="store_true", help="succeed without CUDA")
    args = parser.parse_args(argv)
    if args.mode == "prepare":
        return prepare(args)
    if args.mode == "env":
        return env_report(args.cpu)
    return run_session(args)


if __name__ == "__main__":
    sys.exit(main())
