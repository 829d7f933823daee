"""What the pseudo-negatives do (issue 33 §1): the mean cosines of a contrastive PNR step's main term.

"Logit" here is the cosine ``a . b`` of L2-normalized embeddings, before the temperature divides it. Every value is a
0-d detached tensor on the inputs' device (read on the host only at the trainer's log steps); nothing here draws
random numbers or joins the loss's autograd graph, so a run's numbers are the same with and without it.

Keys (the trainer logs them as ``train/<key>``, ``metrics.json`` ``train_epochs`` holds their epoch means):
- ``diag_positive``: the positive, ``z_i . z_i+`` (SimCLR: the other view; MoCo: the other view's EMA key);
- ``diag_frozen_positive``: the frozen model's copy of that positive, ``z_i . f_i+``;
- ``diag_pseudo_negatives``: the other pseudo-negatives of the main term (SimCLR-PNR: ``f_k``, k not i or i+;
  MoCo-PNR: the frozen queue);
- ``diag_gap``: ``diag_positive - diag_frozen_positive``, how much closer the positive is than its frozen copy
  (SimCLR-PNR: near 0 means the frozen copy, a negative of the main term, cancels most of the pull to the positive);
- ``diag_pull``, ``diag_push`` (the asymmetric BYOL/Barlow/VICReg/SimSiam form): the weighted positive and negative
  terms, the regularizer being ``diag_pull - diag_push``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses.simclr import cross_view_partner


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # elementwise product and sum, not a matmul: autocast leaves it in the inputs' precision
    return (a * b).sum(dim=-1)


@torch.no_grad()
def positive_logit(z1: torch.Tensor, z2: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"diag_positive": mean_i n(z1_i) . n(z2_i)} (inputs (B, D), any scale): the method's own positive pair."""
    return {"diag_positive": _rowwise_dot(F.normalize(z1.detach(), dim=-1), F.normalize(z2.detach(), dim=-1)).mean()}


@torch.no_grad()
def pnr_simclr_logits(z1: torch.Tensor, z2: torch.Tensor, f1: torch.Tensor,
                      f2: torch.Tensor) -> dict[str, torch.Tensor]:
    """SimCLR-PNR's main term over the 2B rows ``Z = n([z1; z2])``, ``F = n([f1; f2])`` (as ``pnr_simclr_loss``):
    ``mean_i Z_i.Z_i+``, ``mean_i Z_i.F_i+`` and the mean of ``Z_i.F_k`` over i and k not in {i, i+} (B >= 2).

    The last one without a (2B, 2B) matrix: the sum over all (i, k) is ``(sum_i Z_i) . (sum_k F_k)``."""
    z = F.normalize(torch.cat([z1, z2], dim=0).detach(), dim=-1)
    f = F.normalize(torch.cat([f1, f2], dim=0).detach(), dim=-1)
    n = z.shape[0]
    positive = _rowwise_dot(z, cross_view_partner(z))
    frozen_positive = _rowwise_dot(z, cross_view_partner(f))
    others = _rowwise_dot(z.sum(dim=0), f.sum(dim=0)) - _rowwise_dot(z, f).sum() - frozen_positive.sum()
    return _with_gap(positive.mean(), frozen_positive.mean(), others / (n * (n - 2)))


@torch.no_grad()
def pnr_moco_logits(q: list[torch.Tensor], k: list[torch.Tensor], f: list[torch.Tensor],
                    frozen_queue: torch.Tensor) -> dict[str, torch.Tensor]:
    """MoCo-PNR's main terms (``pnr_moco_loss`` per view, the two views averaged); inputs L2-normalized.

    View v's anchor ``q[v]`` has the positive ``k[1-v]`` (the other view's EMA key) and the pseudo-negatives
    ``frozen_queue[1-v]`` (K, D). ``f[1-v]``, the frozen copy of that positive, is not among this step's negatives
    (it enters the frozen queue after the step); its cosine says how close the queue's future entries sit."""
    views = [(q[v].detach(), k[1 - v].detach(), f[1 - v].detach(), frozen_queue[1 - v].detach()) for v in (0, 1)]
    positive = sum(_rowwise_dot(a, pos).mean() for a, pos, _, _ in views) / 2
    frozen_positive = sum(_rowwise_dot(a, fp).mean() for a, _, fp, _ in views) / 2
    # mean over (i, n) of a_i . n = (mean_i a_i) . (mean_n n)
    others = sum(_rowwise_dot(a.mean(dim=0), queue.mean(dim=0)) for a, _, _, queue in views) / 2
    return _with_gap(positive, frozen_positive, others)


def pull_push(pull: torch.Tensor, push: torch.Tensor) -> dict[str, torch.Tensor]:
    """The asymmetric PNR's weighted terms, the regularizer being ``pull - push``."""
    return {"diag_pull": pull.detach(), "diag_push": push.detach()}


def _with_gap(positive, frozen_positive, pseudo_negatives) -> dict[str, torch.Tensor]:
    return {"diag_positive": positive, "diag_frozen_positive": frozen_positive,
            "diag_pseudo_negatives": pseudo_negatives, "diag_gap": positive - frozen_positive}
