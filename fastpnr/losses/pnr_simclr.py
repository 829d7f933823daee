"""SimCLR + PNR: symmetric in-batch pseudo-negatives (csm9493/PNR:cassle/losses/pnr.py::simclr_moco_loss_func)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape
from fastpnr.losses.infonce import multi_block_infonce
from fastpnr.losses.simclr import cross_view_partner


def pnr_simclr_loss(z1: torch.Tensor, z2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
                    f1: torch.Tensor, f2: torch.Tensor, temperature: float, backend: str = "torch") -> torch.Tensor:
    """``mean_i l_main,i + mean_i l_reg,i`` over the 2B rows ``Z = n([z1; z2])``, ``P = n([p1; p2])``, ``F = n([f1; f2])``.

    ``l_main,i = -log e^{Z_i.Z_i+/t} / ( sum_{k != i} e^{Z_i.Z_k/t} + sum_{k != i} e^{Z_i.F_k/t} )``
    ``l_reg,i  = -log e^{P_i.F_i/t}  / ( sum_{k != i} e^{P_i.F_k/t} + sum_{k != i} e^{P_i.Z_k/t} )``

    Shapes: all inputs (B, D), unnormalized; ``z`` projector outputs, ``p`` distill-predictor outputs of the
    unnormalized ``z``, ``f`` frozen-model projector outputs (detached here). ``t`` is the anchor's
    ``distill_temperature``. The anchor's ``logit_mask_cat = [1-I, 1-I]`` gives two quirks, kept on purpose:
    (a) l_main drops only F_i, so F_{i+} (same sample, other view) is a negative;
    (b) l_reg drops its own positive P_i.F_i from the denominator (DCL-style), and Z_i; Z_{i+} is a negative.
    The anchor averages a second call with the views swapped; that is a row permutation of the same value,
    so it is computed once here.
    """
    check_same_shape(("z1", "z2", "p1", "p2", "f1", "f2"), z1, z2, p1, p2, f1, f2)
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=-1)
    p = F.normalize(torch.cat([p1, p2], dim=0), dim=-1)
    f = F.normalize(torch.cat([f1, f2], dim=0), dim=-1).detach()
    main = multi_block_infonce(z, cross_view_partner(z), [z, f], temperature, exclude_diagonal=[True, True],
                               positive_in_denominator=False, backend=backend)
    reg = multi_block_infonce(p, f, [f, z], temperature, exclude_diagonal=[True, True],
                              positive_in_denominator=False, backend=backend)
    return main + reg
