"""scripts/gpu_session.sh: the plan (order, time boxes, files, CLI flags that exist), the runner's plumbing (time
boxes, process groups, deadline, summary.json) with CPU quick variants, and prepare's payload."""
from __future__ import annotations

import inspect
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from scripts import gpu_session as gs

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["install", "env", "tests", "bench", "kernels-bf16", "kernels-tf32", "train", "vit", "kernels-compile", "peers",
         "dali"]
CUDA_TESTS = ["test_bfloat16_on_cuda", "test_tf32_on_cuda", "test_cuda_graph_capture",
              "test_captured_graph_matches_eager_on_cuda", "test_cuda_prefetched_batches_equal_plain_ones",
              "test_cuda_iteration_has_no_host_sync", "test_augment_batch_has_no_host_sync_on_cuda",
              "test_triton_matches_float64_reference"]


def _sh(*args, env=None, timeout=300):
    # The script runs this interpreter, not whichever python3 comes first on the PATH (a venv not activated).
    env = {**os.environ, "GPU_SESSION_PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_dry_run_prints_the_plan_in_priority_order_within_the_budget():
    out = _sh("--dry-run")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert [line.split()[1] for line in lines] == ORDER
    assert f"<= budget {gs.BUDGET_S} s" in out.stdout and "timeout_s 580" in out.stdout
    plan = json.loads(_sh("run", "--dry-run", "--json").stdout)
    boxes = [s["box"] for s in plan["steps"]]
    assert plan["total_box_s"] == sum(boxes) <= gs.BUDGET_S == 540 and all(b > 0 for b in boxes)
    assert len(plan["files"]) <= gs.MAX_OUT_FILES and plan["files"][0] == "summary.json"
    optional = [s["optional"] for s in plan["steps"]]
    assert optional == sorted(optional) and optional[-1]  # the optional steps come last
    assert gs.RUN_TIMEOUT_S > gs.BUDGET_S + 2 * gs.KILL_GRACE_S and gs.RUN_TIMEOUT_S <= 600


def step_name(cmd):
    return " ".join(cmd[:4])


def _fire_flags(cmd):
    """(fastpnr command, {flag: value}) of a ``python3 -m fastpnr CMD --flag value --flag=value`` command line."""
    args = list(cmd[cmd.index("fastpnr") + 1:])
    name, flags, i = args[0], {}, 1
    while i < len(args):
        key = args[i][2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value, i = args[i + 1], i + 1
        else:
            value = True
        assert key not in flags, f"--{key} twice in {step_name(cmd)}"
        flags[key] = value
        i += 1
    return name, flags


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_every_fastpnr_command_of_the_plan_uses_existing_options(variant):
    from fastpnr.config import build_config

    checked = set()
    for step in gs.plan():
        cmd = getattr(step, variant)
        if "fastpnr" not in cmd:
            continue
        name, flags = _fire_flags(cmd)
        module = __import__(f"scripts.{name}", fromlist=["main"])
        params = inspect.signature(module.main).parameters
        plain = {k: v for k, v in flags.items() if "." not in k}
        assert set(k.replace("-", "_") for k in plain) <= set(params), (step.name, plain)
        if name == "train":
            cfg = build_config(flags["preset"], {k: v for k, v in flags.items() if "." in k})
            assert cfg.train.max_tasks == 1 and cfg.data.num_tasks == 5 and cfg.method.name == "simclr"
            if variant == "gpu":  # 195 real steps: the first task's 10,000 images in batches of 256, 5 epochs
                assert cfg.optim.batch_size == 256 and (50_000 // 5 // 256) * cfg.optim.epochs == 195
        if name == "bench_kernels":
            from scripts.bench_kernels import CASES

            assert set(flags.get("sizes", "small").split(",")) <= set(CASES)
        checked.add(name)
    assert checked == {"bench", "bench_kernels", "train", "bench_loaders", "bench_vit"}


def test_the_cuda_test_selection_collects_every_cuda_test():
    step = next(s for s in gs.plan() if s.name == "tests")
    out = subprocess.run([sys.executable, *step.cpu[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for name in CUDA_TESTS:
        assert name in out.stdout, name


def _session(tmp_path, steps, budget=60.0):
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    return gs.Session(steps, out, work, budget, cpu=True, env=dict(os.environ)), out


def _bash(name, script, box=30, log="a.log", optional=False):
    cmd = ("bash", "-c", script)
    return gs.Step(name, box, log, cmd, cmd, optional=optional)


def test_a_step_past_its_box_is_timed_out_with_its_whole_process_group(tmp_path):
    pidfile = tmp_path / "pid"
    session, out = _session(tmp_path, [_bash("slow", f"sleep 60 & echo $! > {pidfile}; wait", box=2),
                                       _bash("fails", "echo boom; exit 3"), _bash("fine", "echo done")])
    t0 = time.monotonic()
    summary = session.run()
    assert time.monotonic() - t0 < 20
    status = {r["name"]: (r["status"], r.get("rc")) for r in summary["steps"]}
    assert status["slow"][0] == "timed out" and status["fails"] == ("failed", 3) and status["fine"] == ("ok", 0)
    pid = int(pidfile.read_text())
    state = Path(f"/proc/{pid}/status")
    assert not state.exists() or "zombie" in state.read_text()  # the background sleep died with its group
    saved = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in saved["steps"]] == ["slow", "fails", "fine"] and saved["elapsed_s"] > 0
    assert "boom" in (out / "a.log").read_text() and "boom" in saved["steps"][1]["tail"]


def test_the_deadline_skips_optional_steps_and_shortens_required_ones(tmp_path):
    session, _ = _session(tmp_path, [_bash("extra", "echo never", box=30, optional=True),
                                     _bash("needed", "sleep 60", box=100, log="b.log")], budget=16)
    summary = session.run()
    extra, needed = summary["steps"]
    assert extra["status"] == "skipped" and "not enough time left" in extra["reason"]
    assert needed["status"] == "timed out" and needed["limit_s"] <= 16 - gs.KILL_GRACE_S and needed["seconds"] < 16
    assert summary["elapsed_s"] <= 16 + gs.KILL_GRACE_S


def test_a_failed_env_step_skips_the_cuda_steps(tmp_path):
    session, _ = _session(tmp_path, [_bash("env", "exit 3"), _bash("bench", "echo never")])
    env, bench = session.run()["steps"]
    assert env["status"] == "failed" and bench["status"] == "skipped" and "env step failed" in bench["reason"]


@pytest.mark.slow
def test_cpu_smoke_of_run_writes_logs_and_summary(tmp_path):
    out = tmp_path / "out"
    res = _sh("run", "--cpu", "--only", "install,env,kernels-tf32,dali",
              env={"OUT": str(out), "GPU_SESSION_WORK": str(tmp_path / "work")}, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    status = {r["name"]: r for r in summary["steps"]}
    assert [r["name"] for r in summary["steps"]] == ["install", "env", "kernels-tf32", "dali"]
    assert all(status[n]["status"] == "ok" for n in ("install", "env", "kernels-tf32")), status
    assert "torch" in (out / "env.log").read_text() and "correctness" in (out / "kernels.log").read_text()
    dali_there = subprocess.run([sys.executable, "-c", "import nvidia.dali"], capture_output=True).returncode == 0
    assert status["dali"]["status"] == ("ok" if dali_there else "skipped")
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= gs.MAX_OUT_FILES and set(files) <= set(summary["files"])
    assert "gpu_session summary" in res.stdout


def test_prepare_dry_run_carries_only_what_the_call_needs():
    try:
        gs.find_shared(None)
    except SystemExit:
        pytest.skip("no shared folder with wheels/cp312 beside the checkout")
    res = _sh("prepare", "--dry-run")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "ffcv-" in text and "fire-" in text and "cifar10/train.tar.xz" in text and "cifar10/test.tar.xz" in text
    assert "torch_tb_profiler" not in text and "imagenette" not in text
    mib = float(text.split("payload:")[1].split("=")[1].split("MiB")[0])
    assert mib <= gs.MAX_CARRY_MIB
    call = json.loads(text.strip().splitlines()[-1])
    assert len(call["command"]) <= 2000 and len(call["carry"]) <= 8 and call["carry"] == [".carry"]
    assert not (ROOT / ".carry").exists() or True  # dry run: nothing written (an earlier real prepare may exist)


def test_imagenette_subset_is_class_balanced_and_readable(tmp_path):
    from fastpnr.data.sources import iter_archive

    src = tmp_path / "train.tar.xz"
    with tarfile.open(src, "w:xz") as tf:
        for c in ("a", "b", "c"):
            for i in range(5):
                data = f"{c}{i}".encode()
                info = tarfile.TarInfo(f"train/{c}/{i}.jpg")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    gs.write_subset(src, tmp_path / "sub" / "train.tar", 6)
    names = [n for n, _ in iter_archive(tmp_path / "sub" / "train.tar")]
    assert names == ["train/a/0.jpg", "train/a/1.jpg", "train/b/0.jpg", "train/b/1.jpg", "train/c/0.jpg",
                     "train/c/1.jpg"]


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_the_peers_step_uses_existing_options_and_is_skipped_without_lightly(variant):
    from scripts import bench_peers

    step = next(s for s in gs.plan() if s.name == "peers")
    cmd = list(getattr(step, variant))
    assert cmd[1] == "scripts/bench_peers.py" and step.optional and step.needs == "lightly"
    flags = {cmd[i][2:]: cmd[i + 1] for i in range(2, len(cmd), 2)}
    assert set(flags) <= set(inspect.signature(bench_peers.main).parameters), flags
    assert flags["device"] == ("cuda" if variant == "gpu" else "cpu")
