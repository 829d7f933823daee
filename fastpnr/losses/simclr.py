"""SimCLR NT-Xent loss (csm9493/PNR:cassle/losses/simclr.py::simclr_loss_func)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape
from fastpnr.losses.infonce import multi_block_infonce


def cross_view_partner(x: torch.Tensor) -> torch.Tensor:
    """Rows ``[x2; x1]`` of ``x = [x1; x2]`` (2B, D): row i's partner i+ is the same sample's other view."""
    b = x.shape[0] // 2
    return torch.cat([x[b:], x[:b]], dim=0)


def simclr_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float, backend: str = "torch") -> torch.Tensor:
    """NT-Xent over the 2B rows ``Z = n([z1; z2])``.

    ``loss = mean_i -log( e^{Z_i.Z_{i+}/t} / sum_{k != i} e^{Z_i.Z_k/t} )``, i+ = the other view of row i.
    Shapes: ``z1``, ``z2`` (B, D), unnormalized (L2-normalized here). Negatives are in-batch only; the
    anchor does no cross-GPU gather.
    """
    check_same_shape(("z1", "z2"), z1, z2)
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=-1)
    # The partner is already in the one key block Z, so it must not be added to the denominator twice.
    return multi_block_infonce(z, cross_view_partner(z), [z], temperature, exclude_diagonal=[True],
                               positive_in_denominator=False, backend=backend)
