"""The process's torch settings for a run, shared by the loop and the offline tools: the device, the process group
(torchrun), CPU threads, determinism, the global seed (the same settings give the same numbers in both)."""
from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch

from . import cpu_threads, distributed
from fastpnr.errors import ConfigError
from .precision import resolve_precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} is invalid; allowed here: cpu, auto (no CUDA device is visible)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup_process(cfg, dist=None) -> tuple[torch.device, distributed.Dist]:
    """(device, dist) of a run: ``train.device`` (under torchrun each process's own), the process group (``dist``, else
    from the environment: ``SINGLE`` for one process), then ``train.threads``, ``train.deterministic`` and cuDNN's
    autotuner (off when deterministic)."""
    device = resolve_device(cfg.train.device)
    dist = dist if dist is not None else distributed.from_env(device, cfg.dist)
    device = getattr(dist, "device", device)
    threads = run_threads(cfg, device)[0]
    if threads:
        torch.set_num_threads(threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    return device, dist


def run_threads(cfg, device: torch.device) -> tuple[int | None, str]:
    """(torch's intra-op threads for the run, why): ``train.threads``; None (auto) on a CPU: ``cpu_threads.auto_threads``
    (the cores the load average at start leaves free); on CUDA None: torch's default."""
    if cfg.train.threads:
        return cfg.train.threads, ""
    if device.type != "cpu":
        return None, ""
    return cpu_threads.auto_threads()


def resolve_auto(cfg, device: torch.device):
    """``cfg`` with ``train.precision`` auto replaced by the precision chosen for ``device`` and
    ``train.precision_reason`` saying why (config.json records both); any other precision: ``cfg`` unchanged."""
    if cfg.train.precision != "auto":
        return cfg
    precision, reason = resolve_precision("auto", device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision, precision_reason=reason))


def cpu_lines(cfg, device: torch.device) -> list[str]:
    """What a run prints about its CPU settings: the precision when auto chose it, the threads and why, and one line
    when the machine is oversubscribed at start."""
    lines = []
    if cfg.train.precision_reason:
        lines.append(f"precision: {cfg.train.precision} ({cfg.train.precision_reason})")
    if device.type == "cpu":
        threads, why = run_threads(cfg, device)
        lines.append(f"threads: {threads}" + (f" ({why})" if why else " (train.threads)"))
        busy = cpu_threads.oversubscribed(*cpu_threads.machine_at_start())
        if busy is not None:
            lines.append(busy)
    return lines
