"""A peer side by side: lightly's SimCLR step against fastpnr's, same model, batch, image size, precision and device,
img/s and the ratio in one run; and lightly's NTXentLoss against fastpnr's SimCLR loss on the same embeddings.

lightly (the SSL library a user would pick instead) is run as its documentation shows it: its ``SimCLRTransform``
(torchvision transforms on PIL images) in DataLoader workers, its ``SimCLRProjectionHead`` and ``NTXentLoss``, a plain
PyTorch loop with SGD. fastpnr runs its own step (``fastpnr.train.trainer.Trainer``: resident images and batched
augmentation on the device, LARS, no online probe, no continual strategy). Both train fastpnr's ResNet-18 (CIFAR
stem, ``--width``) with a 2-layer projector without BatchNorm (``--proj_hidden`` -> 128) on CIFAR-10's train images at
``--image_size`` px; img/s counts training images (batch x steps, not views), timed after ``--warmup`` steps.

lightly needs torchvision, and torchvision needs another torch build than README's (torch 2.13 CPU), so this is a
benchmark with its own virtual environment, not a test. Build it once (~5.5 GB; the CUDA build also runs on CPU):

    python3 -m venv .peers-venv
    .peers-venv/bin/pip install lightly torch==2.14.1 torchvision==0.29.1 fire tqdm
    .peers-venv/bin/python scripts/bench_peers.py --device cpu          # ~2 min on 2 cores
    .peers-venv/bin/python scripts/bench_peers.py --device cuda --batch_size 256 --width 64 --image_size 32

(``python scripts/bench_peers.py --setup`` runs the first two lines.) fastpnr itself is imported from this checkout.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    # Run as a file, scripts/ leads sys.path, and its profile.py would shadow the stdlib ``profile`` that cProfile
    # (imported by torch) needs: put the repository root there instead (as scripts/bench.py does).
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != str(ROOT / "scripts")]
    sys.path.insert(0, str(ROOT))
VENV = ROOT / ".peers-venv"
PACKAGES = ["lightly", "torch==2.14.1", "torchvision==0.29.1", "fire", "tqdm"]


def setup() -> None:
    """Build ``.peers-venv`` beside the checkout (git-ignored) with lightly and the torch/torchvision pair it needs."""
    if not (VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", *PACKAGES], check=True)
    print(f"built {VENV}; run: {VENV / 'bin' / 'python'} scripts/bench_peers.py --device cpu")


def _imports():
    try:
        import lightly  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"error: {e.name} is not installed here ({sys.executable}); build the peers' venv: python "
                         f"scripts/bench_peers.py --setup, then run {VENV / 'bin' / 'python'} scripts/bench_peers.py")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def check_losses(temperature: float = 0.2, batch: int = 64, dim: int = 128) -> float:
    """max |lightly NTXentLoss - fastpnr simclr_loss| over a few seeds, in float64 (both normalize the embeddings)."""
    import torch
    from lightly.loss import NTXentLoss

    from fastpnr.losses import simclr_loss

    diffs = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        z1, noise = (torch.randn(batch, dim, generator=g, dtype=torch.float64) for _ in range(2))
        for z2 in (noise, z1 + 0.1 * noise):  # unrelated views, and views whose positives are close
            theirs = NTXentLoss(temperature=temperature)(z1, z2)
            ours = simclr_loss(z1, z2, temperature=temperature)
            diffs.append(abs(float(theirs) - float(ours)))
    return max(diffs) if all(d == d for d in diffs) else float("nan")  # a NaN must not read as agreement


class _PILViews:
    """CIFAR-10's decoded images as PIL images through a transform that returns the views (lightly's dataset role)."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _autocast(device, precision):
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def lightly_img_s(train_set, device, batch_size, width, image_size, proj_hidden, precision, steps, warmup,
                  workers, seed=0) -> float:
    """lightly's documented SimCLR loop on fastpnr's backbone."""
    import torch
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    from fastpnr.models.resnet import build_backbone

    torch.manual_seed(seed)
    backbone = build_backbone("resnet18", cifar_stem=True, width=width)
    model = torch.nn.Sequential(backbone, SimCLRProjectionHead(backbone.feat_dim, proj_hidden, 128, batch_norm=False))
    model.to(device)
    # lightly's CIFAR-10 example: no blur at 32 px; its normalization (ImageNet statistics) as documented
    transform = SimCLRTransform(input_size=image_size, gaussian_blur=0.0)
    ds = _PILViews(train_set.images, train_set.labels, transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    criterion = NTXentLoss(temperature=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    model.train()
    it, done, start = iter(loader), 0, None
    while done < warmup + steps:
        if done == warmup:
            _sync(device)
            start = time.perf_counter()
        try:
            (x0, x1), _ = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
        with _autocast(device, precision):
            loss = criterion(model(x0).float(), model(x1).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def fastpnr_img_s(train_set, device, batch_size, width, proj_hidden, precision, steps, warmup) -> float:
    """fastpnr's SimCLR step: its Trainer, the resident (gpu) loader, no strategy, no online probe."""
    from scripts.bench import Row, build_setup, timed_steps

    row = Row("fastpnr", "gpu", precision, True, device.type == "cuda", False)
    trainer, loader = build_setup(row, train_set, device, batch_size, "simclr", "finetune", workers=0, config_overrides={
        "train.precision": precision, "model.width": width, "method.proj_hidden": proj_hidden,
        "method.proj_out": 128, "train.online_probe": "off", "eval.protocol": "linear"})
    return timed_steps(trainer, loader, device, steps, warmup, nchw=False)[0]


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(device="cpu", batch_size=128, width=16, image_size=16, proj_hidden=512, precision=None, steps=10, warmup=2,
         workers=None, data_dir=None, setup=False):
    """Print the loss check and one row per library (img/s) with the ratio fastpnr / lightly.

    precision: fp32 or bf16 (autocast in both loops); default: fastpnr's auto for the device (bf16 on CUDA, on a
    CPU bf16 only with native bf16). workers: lightly's DataLoader workers (default: the cores, at most 8)."""
    if setup:
        return globals()["setup"]()
    _imports()
    import lightly
    import torch

    from fastpnr.data import load_dataset
    from fastpnr.system.precision import resolve_precision

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; use --device cpu")
    precision = precision or resolve_precision("auto", dev)[0]
    workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
    diff = check_losses()
    print(f"# lightly NTXentLoss vs fastpnr simclr_loss (float64, 3 seeds x 2 pairs, batch 64, temperature 0.2): "
          f"max |diff| {diff:.2e} -> {'agree' if diff <= 1e-12 else 'DIFFER'}")
    train_set = load_dataset("cifar10", "train", data_dir, image_size=image_size)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    load = os.getloadavg()[0]
    print(f"# device {name} | torch {torch.__version__} | lightly {lightly.__version__} | ResNet-18 width {width}, "
          f"{image_size} px, batch {batch_size}, {precision}, projector {proj_hidden}->128 | {steps} steps after "
          f"{warmup} | lightly workers {workers} | load average {load:.1f}")
    theirs = lightly_img_s(train_set, dev, batch_size, width, image_size, proj_hidden, precision, steps, warmup, workers)
    print(f"lightly (SimCLRTransform in {workers} DataLoader workers, NTXentLoss, SGD) | {theirs:8.1f} img/s", flush=True)
    ours = fastpnr_img_s(train_set, dev, batch_size, width, proj_hidden, precision, steps, warmup)
    print(f"fastpnr (resident images, batched augmentation, LARS)          | {ours:8.1f} img/s", flush=True)
    print(f"ratio fastpnr / lightly: {ours / theirs:.2f}x (load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
