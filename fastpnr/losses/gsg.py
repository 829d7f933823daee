"""Guided Stop-Gradient (bych-lee/gsg:main_pretrain.py::train, the simsiam_gsg / byol_gsg branch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape


def gsg_pairing(z11: torch.Tensor, z12: torch.Tensor, z21: torch.Tensor,
                z22: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the closest cross-image pair ``(a*, b*) = argmin_{a,b} |z_1a - z_2b|_2`` as int64 (N,) tensors of 0/1.

    ``z_1a``: image 1 view a; ``z_2b``: image 2 (the permuted batch) view b; shapes (N, D), the unnormalized,
    detached targets. Ties go to the first of the anchor's order (11-21, 11-22, 12-21, 12-22) as ``argmin``.
    Index 0 means view 1, index 1 view 2. Tensor ops only (no host sync).
    """
    check_same_shape(("z11", "z12", "z21", "z22"), z11, z12, z21, z22)
    z11, z12, z21, z22 = z11.detach(), z12.detach(), z21.detach(), z22.detach()
    d = torch.stack([(x - y).pow(2).sum(dim=1).sqrt() for x, y in ((z11, z21), (z11, z22), (z12, z21), (z12, z22))],
                    dim=1)  # (N, 4)
    idx = d.argmin(dim=1)
    return idx // 2, idx % 2


def gsg_loss(p11: torch.Tensor, p12: torch.Tensor, p21: torch.Tensor, p22: torch.Tensor,
             z11: torch.Tensor, z12: torch.Tensor, z21: torch.Tensor, z22: torch.Tensor) -> torch.Tensor:
    """``mean_rows -1/2 [cos(p_1a*, sg z_1ā*) + cos(p_2b*, sg z_2b̄*)]`` with ``(a*, b*) = gsg_pairing(z...)``.

    The closest cross-image pair are the sources (predictor side, gradient flows); their sibling views are the
    stop-gradient targets. Shapes (N, D). ``torch.where`` picks per row, so the gradient reaches only the
    selected sources and no target.
    """
    check_same_shape(("p11", "p12", "p21", "p22", "z11", "z12", "z21", "z22"),
                     p11, p12, p21, p22, z11, z12, z21, z22)
    a, b = gsg_pairing(z11, z12, z21, z22)
    a2, b2 = (a == 1).unsqueeze(1), (b == 1).unsqueeze(1)
    z11, z12, z21, z22 = z11.detach(), z12.detach(), z21.detach(), z22.detach()
    source1, target1 = torch.where(a2, p12, p11), torch.where(a2, z11, z12)
    source2, target2 = torch.where(b2, p22, p21), torch.where(b2, z21, z22)
    cos = F.cosine_similarity(source1, target1, dim=-1) + F.cosine_similarity(source2, target2, dim=-1)
    return -0.5 * cos.mean()
