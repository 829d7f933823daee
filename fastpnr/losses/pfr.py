"""PFR, projected functional regularization (Gomez-Villa et al., CVPR-W 2022; alviur/CVPR_PFR cassle/distillers/pfr.py).

The temporal projector h maps the current *backbone* features f_v into the previous model's feature space; the loss
is the negative mean cosine similarity to the frozen features, averaged over the two views. The caller adds
``lambda * pfr_distill(...)`` to the SSL loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastpnr.losses._checks import check_same_shape


def pfr_distill(p1: torch.Tensor, p2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """``-1/2 [mean_i cos(p1_i, sg f1_i) + mean_i cos(p2_i, sg f2_i)]``, with ``p_v = h(f_v)`` of the current
    backbone features and ``f_v`` the frozen backbone's features of the same view (N, D); ``cos`` is
    ``nn.CosineSimilarity(dim=1)`` (eps 1e-8), as the authors' ``criterion``."""
    check_same_shape(("p1", "p2", "f1", "f2"), p1, p2, f1, f2)
    return -0.5 * (F.cosine_similarity(p1, f1.detach(), dim=1).mean()
                   + F.cosine_similarity(p2, f2.detach(), dim=1).mean())
