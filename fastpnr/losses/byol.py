"""BYOL regression loss (csm9493/PNR:cassle/losses/byol.py::byol_loss_func)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``loss = mean_i (2 - 2 cos(p_i, z_i))``; shapes ``p``, ``z`` (B, D).

    No stop-gradient inside: the caller passes ``z.detach()`` (or EMA targets) where the method needs it.
    The BYOL method sums the two symmetric terms.
    """
    check_same_shape(("p", "z"), p, z)
    return 2 - 2 * F.cosine_similarity(p, z, dim=-1).mean()
