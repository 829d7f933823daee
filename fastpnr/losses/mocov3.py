"""MoCo v3 contrastive loss (Chen, Xie & He, ICCV 2021, Alg. 1; facebookresearch/moco-v3 moco/builder.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape
from fastpnr.losses.infonce import multi_block_infonce


def mocov3_contrast(q: torch.Tensor, k: torch.Tensor, temperature: float, backend: str = "torch") -> torch.Tensor:
    """One direction, ``2 t CE(q; k)``: ``2 t mean_i -log( e^{q_i.k_i/t} / sum_j e^{q_i.k_j/t} )``.

    Shapes: ``q`` (N, D) queries (predictor outputs), ``k`` (N, D) the other view's momentum keys; both unnormalized
    (L2-normalized here), ``k`` detached here. The negatives are the other samples' keys of the same batch; the
    factor 2t is the paper's (it makes the gradient's scale independent of t).
    """
    check_same_shape(("q", "k"), q, k)
    q, k = F.normalize(q, dim=-1), F.normalize(k.detach(), dim=-1)
    # the positive k_i is in the key block: it is not added to the denominator a second time
    return 2 * temperature * multi_block_infonce(q, k, [k], temperature, exclude_diagonal=[False],
                                                 positive_in_denominator=False, backend=backend)


def mocov3_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float,
                backend: str = "torch") -> torch.Tensor:
    """The symmetrized loss ``2t CE(q1; k2) + 2t CE(q2; k1)`` (``mocov3_contrast``): query of each view against the
    momentum keys of the other. All inputs (B, D), unnormalized; under torchrun the method passes the global batch."""
    return mocov3_contrast(q1, k2, temperature, backend) + mocov3_contrast(q2, k1, temperature, backend)
