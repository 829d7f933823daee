"""SGD + LARS with foreach ops and no host sync, and the anchors' warmup-cosine schedule.

LARS as in the anchors' ``LARSWrapper`` (cassle/utils/lars.py), per parameter p with gradient g:

    r = eta * ||p|| / (||g|| + wd * ||p|| + 1e-8);  with clip: r = min(r / lr, 1)
    g <- (g + wd * p) * r                       (only when ||p|| != 0 and ||g|| != 0, else g unchanged)

then SGD with momentum. With ``exclude_bias_n_norm`` the 1-D parameters (biases, norm weights) get neither LARS
nor weight decay (the wrapper zeroes the group weight decay during the step). The anchor's
``if p_norm != 0 and g_norm != 0`` is a host sync per parameter; here it is a ``torch.where``.

A group's ``lr`` is a float, or a 0-d tensor on the parameters' device (``use_tensor_lr``): then the step reads
it on the device, so a captured CUDA graph sees each new value, written outside the graph with ``fill_``
(``set_lr`` does that). Both forms run the same ops and give the same bits.
"""
from __future__ import annotations

import math

import torch


def groups_with_grads(optimizer):
    """(group, its parameters that have a gradient, their gradients) of each param group that has any."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if params:
            yield group, params, [p.grad for p in params]


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 clip: bool = True, exclude_bias_n_norm: bool = True, lars: bool = True, eps: float = 1e-8):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip,
                        exclude_bias_n_norm=exclude_bias_n_norm, lars=lars, eps=eps)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group, params, grads in groups_with_grads(self):
            wd, lr = group["weight_decay"], group["lr"]
            adapt = [p for p in params if group["lars"] and not (group["exclude_bias_n_norm"] and p.ndim == 1)]
            if adapt:
                g_adapt = [p.grad for p in adapt]
                p_norm = torch.stack(torch._foreach_norm(adapt))
                g_norm = torch.stack(torch._foreach_norm(g_adapt))
                ratio = group["eta"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                if group["clip"]:
                    ratio = torch.clamp(ratio / lr, max=1.0)  # lr: a float or a 0-d device tensor
                valid = (p_norm != 0) & (g_norm != 0)
                scale = torch.where(valid, ratio, torch.ones_like(ratio))
                decay = torch.where(valid, torch.full_like(ratio, wd), torch.zeros_like(ratio))
                # g <- (g + wd p) * r, per parameter, as tensors (no .item()).
                torch._foreach_add_(g_adapt, torch._foreach_mul(adapt, list(decay.unbind())))
                torch._foreach_mul_(g_adapt, list(scale.unbind()))
            elif not group["lars"] and wd:
                # Plain SGD group: coupled weight decay.
                torch._foreach_add_(grads, params, alpha=wd)
            momentum = group["momentum"]
            if momentum:
                bufs = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    bufs.append(state["momentum_buffer"])
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, grads)
                _sgd_update(params, bufs, lr)
            else:
                _sgd_update(params, grads, lr)
        return loss

    def use_tensor_lr(self, device) -> None:
        """Make every group's lr a 0-d float32 tensor on ``device`` (kept if it already is one there)."""
        device = torch.device(device)
        for group in self.param_groups:
            lr = group["lr"]
            placed = (isinstance(lr, torch.Tensor) and lr.device.type == device.type
                      and device.index in (None, lr.device.index) and lr.dtype == torch.float32 and lr.ndim == 0)
            if not placed:
                group["lr"] = torch.as_tensor(lr).detach().to(device=device, dtype=torch.float32).reshape(())


def _sgd_update(params, updates, lr) -> None:
    """p <- p - lr * u. One code path for a float lr and a 0-d tensor lr (read on the device, no ``.item()``): both
    multiply in the parameters' dtype, so the two give the same bits."""
    torch._foreach_sub_(params, torch._foreach_mul(updates, lr))


def build_optimizer(groups: list[dict], cfg) -> torch.optim.Optimizer:
    """LARS (``optim.optimizer=lars``), plain momentum SGD (``sgd``) or AdamW (``adamw``) over the
    method's parameter groups."""
    base_lr = cfg.effective_lr(cfg.lr)
    for g in groups:
        g.setdefault("lr", base_lr)
        g.setdefault("weight_decay", cfg.weight_decay)
        g["base_lr"] = g["lr"]
    if cfg.optimizer == "adamw":
        from .adamw import AdamW

        return AdamW(groups, lr=base_lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                     exclude_bias_n_norm=cfg.exclude_bias_n_norm)
    return LARS(groups, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta,
                clip=cfg.lars_clip, exclude_bias_n_norm=cfg.exclude_bias_n_norm, lars=cfg.optimizer == "lars")


def warmup_cosine(t: float, total: float, base_lr: float, warmup: float, start_lr: float, min_lr: float) -> float:
    """pl_bolts LinearWarmupCosineAnnealingLR as a pure function of the epoch (or step) ``t``.

    Linear from ``start_lr`` at t=0 to ``base_lr`` at t=warmup-1, then cosine to ``min_lr`` at t=total.
    """
    if warmup > 0 and t < warmup:
        if warmup == 1:
            return start_lr
        return start_lr + t * (base_lr - start_lr) / (warmup - 1)
    span = max(total - warmup, 1)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * (t - warmup) / span))


def set_lr(optimizer, epoch: float, total_epochs: int, cfg) -> float | None:
    """Set every group's lr for (fractional) ``epoch``; per-epoch schedules (the anchors') use floor(epoch). Returns
    the first scheduled group's lr (the backbone's; a host float, for the ``train/lr`` scalar)."""
    t = math.floor(epoch) if cfg.schedule_interval == "epoch" else epoch
    scheduled = None
    for g in optimizer.param_groups:
        if g.get("static_lr"):
            lr = g["base_lr"]
        else:
            lr = warmup_cosine(t, total_epochs, g["base_lr"], cfg.warmup_epochs, cfg.warmup_start_lr, cfg.min_lr)
            scheduled = lr if scheduled is None else scheduled
        if isinstance(g["lr"], torch.Tensor):
            g["lr"].fill_(lr)  # in place: a captured graph holds this tensor's address
        else:
            g["lr"] = lr
    return scheduled
