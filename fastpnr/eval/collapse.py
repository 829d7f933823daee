"""Collapse measures of a batch of embeddings (issue 21): pure functions of a (B, D) tensor, on its device.

- ``normalized_std``: the SimSiam paper's (Chen & He 2021, Fig. 2) per-channel std of the l2-normalized outputs,
  averaged over the D channels. Rows spread over the sphere give about 1/sqrt(D); a collapsed (constant) output 0.
- ``effective_rank``: Roy & Vetterli's (2007) effective rank exp(H(p)) of the singular values, p_k = s_k / sum s;
  between 1 (one direction) and min(B, D) (all directions equally used); a rank-k matrix gives at most k.

The trainer evaluates them on the first view's projector output ``z`` at every ``train.log_every`` step, outside
the training step (so the step stays free of host syncs and of the SVD's cost).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_std(z: torch.Tensor) -> torch.Tensor:
    """``mean_j std_i (z_i / |z_i|)_j``: sample std (n - 1) over the B rows, mean over the D channels; 0-d tensor.

    For rows drawn isotropically the normalized components have mean 0 and variance exactly 1/D, so the value is
    1/sqrt(D) up to the sample std's sampling spread; for a constant embedding every channel's std is 0."""
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"normalized_std needs a (B, D) tensor with B >= 2, got shape {tuple(z.shape)}")
    n = F.normalize(z.float(), dim=1)
    return n.std(dim=0, correction=1).mean()


def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``exp(-sum_k p_k log p_k)``, ``p_k = s_k / sum_l s_l``, s the singular values of the (B, D) matrix as it is
    (uncentered, as RankMe); zero singular values contribute 0 (0 log 0 = 0); 0-d tensor (0 for an all-zero z)."""
    if z.ndim != 2:
        raise ValueError(f"effective_rank needs a (B, D) tensor, got shape {tuple(z.shape)}")
    s = torch.linalg.svdvals(z.float() if z.dtype != torch.float64 else z)
    total = s.sum()
    p = s / total.clamp_min(eps)
    entropy = -(p * torch.log(p.clamp_min(eps))).sum()  # p = 0 gives 0 * log(eps) = 0
    return torch.where(total > eps, torch.exp(entropy), torch.zeros_like(entropy))


def collapse_measures(z: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both measures of one batch's embeddings as 0-d device tensors (the caller reads them on the host)."""
    with torch.no_grad():
        z = z.detach()
        return {"collapse_std": normalized_std(z), "effective_rank": effective_rank(z)}
