"""MLP heads of the anchors (projectors, predictors, the PNR/CaSSLe distill predictor)."""
from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, *, layers: int = 2, bn: bool = True, bias: bool = True,
        last_bn: bool = False, last_bn_affine: bool = True, last_bias: bool | None = None) -> nn.Sequential:
    """``layers``-layer MLP: (Linear -> [BN] -> ReLU) x (layers-1) -> Linear [-> BN].

    - SimCLR / MoCo v2+ projector: ``mlp(512, 2048, 128, bn=False)`` (Linear-ReLU-Linear)
    - BYOL projector/predictor, distill predictor: ``mlp(D, H, D)`` (Linear-BN-ReLU-Linear)
    - Barlow / VICReg projector: ``mlp(512, 2048, 2048, layers=3)``
    - SimSiam projector: ``mlp(512, 2048, 2048, layers=3, bias=False, last_bn=True, last_bn_affine=False)``
    - MoCo v3 predictor on a ResNet: ``mlp(256, 4096, 256, bias=False, last_bias=False)`` (``last_bias`` None: a
      bias unless last_bn)
    """
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(dim, hidden, bias=bias or not bn))
        if bn:
            mods.append(nn.BatchNorm1d(hidden))
        mods.append(nn.ReLU(inplace=True))
        dim = hidden
    mods.append(nn.Linear(dim, out_dim, bias=(not last_bn) if last_bias is None else last_bias))
    if last_bn:
        mods.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*mods)
