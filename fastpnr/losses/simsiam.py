"""SimSiam negative-cosine loss (csm9493/PNR:cassle/losses/simsiam.py::simsiam_loss_func)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape


def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``loss = -mean_i cos(p_i, z_i)``; shapes ``p``, ``z`` (B, D). No stop-gradient inside (the caller detaches)."""
    check_same_shape(("p", "z"), p, z)
    return -F.cosine_similarity(p, z, dim=-1).mean()
