"""fastpnr bench_vit: training-step throughput of a ViT MoCo v3 + PNR step, one row per attention kernel.

Every row times fastpnr's whole step (both views through the online ViT and the momentum encoder, the frozen
previous model, the PNR loss, backward, AdamW, the EMA update; ``begin_task(method, 1)`` makes the frozen model
active) for ``steps`` steps after ``warmup`` untimed ones, with ``scaled_dot_product_attention`` held to one backend
(``torch.nn.attention.sdpa_kernel``): flash, efficient (memory-efficient) and math. Inputs are random normal images of
the preset's size on the device (a step's cost does not depend on the pixels, and no data need be carried); img/s
counts training images (batch x steps). A backend that cannot run the shapes or dtype says so in its row.

    fastpnr bench_vit                                  # CUDA: tinyimagenet100-5t-vit (ViT-Small/8, 64 px), bf16, batch 256
    fastpnr bench_vit --device cpu --quick             # seconds: a smoke test (ViT-Small/8 cut to 1 block, batch 8)
"""
from __future__ import annotations

import time

import torch

BACKENDS = ("flash", "efficient", "math")


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH}[name]


def build_step(preset: str, device: torch.device, batch_size: int, quick: bool, cuda_graph: bool, log=print):
    """(trainer, image size) of the preset's ViT MoCo v3 + PNR step with the frozen previous model active."""
    from fastpnr.config import build_config
    from fastpnr.system.distributed import SINGLE
    from fastpnr.train.build import build_models
    from fastpnr.train.optim import build_optimizer, set_lr
    from fastpnr.train.trainer import Trainer

    precision = "bf16" if device.type == "cuda" else "fp32"  # CPU bf16 matmuls measure the CPU's bf16 support
    ov = {"optim.batch_size": batch_size, "train.device": str(device), "train.precision": precision,
          "train.cuda_graph": cuda_graph, "train.online_probe": "task", "method": "mocov3", "regularizer": "pnr"}
    if quick:
        ov.update({"model.depth": 1, "method.proj_hidden": 64, "method.pred_hidden": 64, "method.proj_out": 32,
                   "regularizer.distill_hidden": 32})
    cfg = build_config(preset, ov)
    method, reg = build_models(cfg, 100, device, SINGLE, log=log)
    reg.begin_task(method, 0)
    reg.begin_task(method, 1)
    opt = build_optimizer(method.param_groups(cfg.optim) + reg.param_groups(cfg.optim), cfg.optim)
    set_lr(opt, 0, cfg.optim.epochs, cfg.optim)
    return Trainer(method, reg, opt, cfg.train, device, log=log), cfg.model.image_size, cfg


def time_backend(trainer, size: int, batch_size: int, device, backend: str, steps: int, warmup: int) -> float:
    """Images per second of ``steps`` steps after ``warmup`` untimed ones, attention held to ``backend``."""
    from torch.nn.attention import sdpa_kernel

    g = torch.Generator(device=device).manual_seed(0)
    views = [torch.randn(batch_size, 3, size, size, device=device, generator=g) for _ in range(2)]
    labels = torch.randint(0, 100, (batch_size,), device=device, generator=g)
    with sdpa_kernel(_sdpa_backend(backend)):
        for i in range(warmup + steps):
            if i == warmup:
                _sync(device)
                start = time.perf_counter()
            logs = trainer.run_step(views, labels, (None, labels), i, warmup + steps)
        _sync(device)
    elapsed = time.perf_counter() - start
    loss = float(logs["loss"])
    if loss != loss:
        raise RuntimeError(f"non-finite loss with the {backend} backend")
    return steps * batch_size / elapsed


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(device="cuda", preset="tinyimagenet100-5t-vit", batch_size=256, steps=30, warmup=5, backends="flash,efficient,math",
         cuda_graph=True, quick=False):
    """Print one img/s row per attention backend (the list above); see the module docstring."""
    from fastpnr.errors import require

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
    names = [b.strip() for b in (backends if isinstance(backends, (list, tuple)) else str(backends).split(","))]
    for name in names:
        require(name in BACKENDS, "backends", name, BACKENDS)
    if quick:
        batch_size, steps, warmup = min(batch_size, 8), min(steps, 2), min(warmup, 1)
    quiet = lambda *a, **k: None  # noqa: E731
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"bench_vit: {preset}, batch {batch_size}, {steps} timed steps after {warmup}, {where}, torch "
          f"{torch.__version__}")
    for name in names:
        try:
            trainer, size, cfg = build_step(preset, device, batch_size, quick, cuda_graph, log=quiet)
            rate = time_backend(trainer, size, batch_size, device, name, steps, warmup)
        except RuntimeError as e:  # a backend that cannot run these shapes/dtype on this device
            print(f"  {name:<10} unavailable: {str(e).splitlines()[0][:160]}")
            continue
        print(f"  {name:<10} {rate:10.1f} img/s  ({cfg.model.backbone}/{cfg.model.patch_size} at {size} px, "
              f"{cfg.train.precision}, depth {cfg.model.depth or 12}, graph {cfg.train.cuda_graph and device.type == 'cuda'})")
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()


def cli(argv=None):
    from fastpnr.cli import run_fire

    run_fire(main, argv, name="fastpnr bench_vit")


if __name__ == "__main__":
    cli()
