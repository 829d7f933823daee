"""The process's torch settings for a run, shared by the loop and the offline tools: the device, the process group
(torchrun), CPU threads, determinism, the global seed. The same settings give the same numbers in both."""
from __future__ import annotations

import random

import numpy as np
import torch

from . import distributed
from .errors import ConfigError


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
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.train.deterministic
    return device, dist
