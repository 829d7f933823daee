"""What a CPU user gets by default (issue 37): train.precision auto (bf16 only on a CPU with native bf16, recorded in
config.json and the log), train.threads auto from the load average at start, the oversubscribed line, OpenMP's wait
policy set before torch starts, the study's CPU slots."""
from __future__ import annotations

import json

import pytest
import torch

from fastpnr.system import cpu_threads, precision
from fastpnr.config import build_config
from fastpnr.errors import ConfigError
from fastpnr.system.runtime import resolve_auto, run_threads
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")


@pytest.fixture
def cpu_bf16(monkeypatch):
    """``set(amx, avx512_bf16)``: what torch's CPU checks report in this test."""
    def set_isa(amx: bool, avx512_bf16: bool):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    return set_isa


def test_auto_is_fp32_on_a_cpu_without_native_bf16(cpu_bf16):
    cpu_bf16(amx=False, avx512_bf16=False)
    chosen, why = precision.resolve_precision("auto", CPU)
    assert chosen == "fp32" and why.startswith("auto: this CPU has no native bf16")
    assert precision.autocast_dtype("auto", CPU) is None


@pytest.mark.parametrize("avx512_bf16", [False, True])
def test_auto_is_bf16_on_a_cpu_with_amx(cpu_bf16, avx512_bf16):
    cpu_bf16(amx=True, avx512_bf16=avx512_bf16)
    chosen, why = precision.resolve_precision("auto", CPU)
    assert chosen == "bf16" and "natively (AMX" in why
    assert precision.autocast_dtype("auto", CPU) is torch.bfloat16


def test_auto_is_fp32_on_a_cpu_with_avx512_bf16_alone(cpu_bf16):
    """Measured on such a CPU (BENCHMARKS.md): bf16 with 2 threads took 4x fp32's CPU time."""
    cpu_bf16(amx=False, avx512_bf16=True)
    chosen, why = precision.resolve_precision("auto", CPU)
    assert chosen == "fp32" and "AVX512-BF16 but no AMX" in why
    assert precision.autocast_dtype("auto", CPU) is None


def test_auto_is_bf16_on_cuda_and_explicit_precisions_stay(cpu_bf16):
    cpu_bf16(amx=False, avx512_bf16=False)
    assert precision.resolve_precision("auto", torch.device("cuda")) == ("bf16", "auto: a CUDA device")
    for name in ("bf16", "fp16", "fp32", "fp64"):
        assert precision.resolve_precision(name, CPU) == (name, "")


def test_the_default_is_auto_and_a_run_config_records_the_choice(cpu_bf16):
    cpu_bf16(amx=False, avx512_bf16=False)
    cfg = build_config("smoke")
    assert cfg.train.precision == "auto"
    resolved = resolve_auto(cfg, CPU)
    assert resolved.train.precision == "fp32" and "no native bf16" in resolved.train.precision_reason
    explicit = build_config("smoke", {"train.precision": "bf16"})
    assert resolve_auto(explicit, CPU) is explicit  # an explicit precision (and a resumed run's) is kept as it is


def test_a_run_with_auto_logs_and_records_fp32_on_a_cpu_without_native_bf16(cpu_bf16, data_root, tmp_path):
    """The trainer and the evaluation run in fp32 (no autocast) and config.json says why."""
    from fastpnr.train.continual import ContinualRun

    cpu_bf16(amx=False, avx512_bf16=False)
    lines = []
    cfg = build_config("smoke", tiny_overrides(data_root, **{"train.precision": "auto", "train.max_tasks": 1,
                                                             "eval.forward_transfer": False}))
    run = ContinualRun(cfg, tmp_path / "run", log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    run.fit()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["precision"] == "fp32" and saved["precision_reason"].startswith("auto: this CPU has no native bf16")
    assert any(line.startswith("precision: fp32 (auto: this CPU has no native bf16") for line in lines), lines
    assert run.cfg.train.precision == "fp32"


def test_the_precision_option_names_auto():
    with pytest.raises(ConfigError, match=r"train.precision.*auto, bf16, fp16, fp32, fp64"):
        build_config("smoke", {"train.precision": "fp8"})


# ------------------------------------------------------------------------------------------------ threads
@pytest.mark.parametrize("cores, load, threads", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.2, 1), (2, 9.0, 1),
                                                  (8, 3.0, 5), (1, 0.0, 1)])
def test_auto_threads_take_every_core_when_waiting_passively_else_the_cores_the_load_leaves_free(cores, load, threads):
    assert cpu_threads.threads_for(cores, load) == threads
    assert cpu_threads.threads_for(cores, load, passive=True) == cores


def test_the_oversubscribed_line_names_the_load_and_what_to_do():
    assert cpu_threads.oversubscribed(2, 2.0) is None
    line = cpu_threads.oversubscribed(2, 6.4)
    assert "\n" not in line and "load average 6.4 on 2 cores" in line and "run it when the load is lower" in line


def test_threads_auto_on_the_command_line_is_none_and_cuda_keeps_torchs_default():
    assert build_config("smoke", {"train.threads": "auto"}).train.threads is None
    with pytest.raises(ConfigError, match="train.threads"):
        build_config("smoke", {"train.threads": 0})
    cfg = build_config("smoke")
    assert run_threads(cfg, torch.device("cuda")) == (None, "")
    assert run_threads(build_config("smoke", {"train.threads": 1}), CPU) == (1, "")
    threads, why = run_threads(cfg, CPU)
    assert threads == cpu_threads.auto_threads()[0] and why.startswith("auto: ") and "load average" in why


def test_the_wait_policy_is_passive_unless_the_user_set_one():
    env = {}
    cpu_threads.prepare_environment(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    cpu_threads.prepare_environment(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_one_cpu_study_cell_at_a_time_takes_auto_threads_several_share_the_cores():
    from fastpnr.study import runner as study

    one = study.make_slots(None, nproc_per_cell=1, jobs=1, cpu_count=2)
    assert [s.threads for s in one] == [None] and one[0].describe() == "CPU, auto threads"
    assert one[0].env({}) == {}  # no OMP_NUM_THREADS: the cell decides from the load at its start
    two = study.make_slots(None, nproc_per_cell=1, jobs=2, cpu_count=2)
    assert [s.threads for s in two] == [1, 1]


@pytest.mark.parametrize("policy, load, threads, busy", [("PASSIVE", 0.2, 2, False), ("PASSIVE", 6.4, 2, True),
                                                          ("ACTIVE", 0.2, 2, False), ("ACTIVE", 1.3, 1, False),
                                                          (None, 6.4, 1, True)])
def test_a_cpu_run_says_its_threads_and_whether_the_machine_is_oversubscribed(monkeypatch, policy, load, threads, busy):
    from fastpnr.system.runtime import cpu_lines

    monkeypatch.setattr(cpu_threads, "machine_at_start", lambda: (2, load))
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    lines = cpu_lines(build_config("smoke", {"train.precision": "fp32"}), CPU)
    assert lines[0].startswith(f"threads: {threads} (auto: ") and f"load average {load:.1f}" in lines[0], lines
    assert ("OMP_WAIT_POLICY=PASSIVE" in lines[0]) == (policy == "PASSIVE")
    assert len(lines) == 1 + busy and (not busy or "oversubscribed: load average 6.4 on 2 cores" in lines[1])
    assert run_threads(build_config("smoke"), CPU)[0] == threads


def test_the_decode_pool_takes_the_cores_the_load_leaves_free_whatever_the_wait_policy(monkeypatch):
    from fastpnr.data import decode

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # processes, not OpenMP threads
    for load, workers in ((0.2, 2), (3.0, 1)):
        monkeypatch.setattr(cpu_threads, "machine_at_start", lambda load=load: (2, load))
        assert decode.decode_workers() == workers
