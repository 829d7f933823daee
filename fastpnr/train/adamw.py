"""AdamW (Loshchilov & Hutter, ICLR 2019) with foreach ops, no host sync, and a float or 0-d device-tensor lr.

Per parameter p with gradient g, at its step t (counted per parameter, a 0-d tensor on its device):

    p <- p (1 - lr wd)                       (decoupled weight decay; none on 1-D parameters with exclude_bias_n_norm)
    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
    p <- p - lr m / ((1 - b1^t) (sqrt(v / (1 - b2^t)) + eps))

``torch.optim.AdamW``'s update (its tests compare the two in float64). The lr may be a 0-d tensor read on the device
(``use_tensor_lr``, for a captured CUDA graph), as in ``optim.LARS``; ``optim.set_lr`` sets it either way.
"""
from __future__ import annotations

import torch

from .optim import LARS, _sgd_update, groups_with_grads


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, exclude_bias_n_norm: bool = True):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        exclude_bias_n_norm=exclude_bias_n_norm)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group, params, grads in groups_with_grads(self):
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            b1, b2 = group["betas"]
            m, v, steps = self._state(params)
            torch._foreach_add_(steps, 1.0)
            decayed = [p for p in params if not (group["exclude_bias_n_norm"] and p.ndim == 1)]
            if wd and decayed:
                # lr: a float or a 0-d float32 device tensor, taken to the weights' dtype before 1 - lr wd rounds
                rate = lr.to(decayed[0].dtype) if isinstance(lr, torch.Tensor) else lr
                torch._foreach_mul_(decayed, 1.0 - rate * wd)
            torch._foreach_lerp_(m, grads, 1.0 - b1)
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, grads, grads, value=1.0 - b2)
            bias1, bias2 = (_one_minus_power(b, steps) for b in (b1, b2))
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, torch._foreach_sqrt(bias2))
            torch._foreach_add_(denom, eps)
            torch._foreach_mul_(denom, bias1)
            _sgd_update(params, torch._foreach_div(m, denom), lr)
        return loss

    def _state(self, params):
        m, v, steps = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=p.dtype, device=p.device)  # fp64 runs: exact bias terms
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            m.append(state["exp_avg"])
            v.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return m, v, steps

    use_tensor_lr = LARS.use_tensor_lr


def _one_minus_power(base: float, steps: list[torch.Tensor]) -> list[torch.Tensor]:
    """``1 - base^t`` per step tensor, on the device."""
    out = torch._foreach_pow(base, steps)
    torch._foreach_neg_(out)
    torch._foreach_add_(out, 1.0)
    return out
