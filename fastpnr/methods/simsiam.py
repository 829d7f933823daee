"""SimSiam (anchors §1.2): 3-layer projector ending in affine-free BN, bottleneck predictor, stop-gradient."""
from __future__ import annotations

from torch import nn

from ..losses import simsiam_loss
from ..models import mlp
from fastpnr.system.precision import upcast
from .base import Method


def simsiam_heads(method) -> None:
    c = method.cfg
    method.projector = mlp(method.feat_dim, c.proj_hidden, c.proj_out, layers=3, bias=False, last_bn=True, last_bn_affine=False)
    method.predictor = mlp(c.proj_out, c.pred_hidden, c.proj_out, bias=False) if c.predictor else nn.Identity()


def static_predictor_groups(method, groups: list[dict]) -> list[dict]:
    """Move the predictor into its own group that the scheduler leaves at the base lr (none without a predictor:
    the identity has no parameters)."""
    if not method.cfg.fix_pred_lr or not method.cfg.predictor:
        return groups
    pred = {id(p) for p in method.predictor.parameters()}
    groups[0]["params"] = [p for p in groups[0]["params"] if id(p) not in pred]
    return [groups[0], {"name": "predictor", "params": list(method.predictor.parameters()), "static_lr": True}, *groups[1:]]


class SimSiam(Method):
    def build_heads(self):
        simsiam_heads(self)

    def forward_views(self, views):
        out = super().forward_views(views)
        out["p"] = [self.predictor(z) for z in out["z"]]
        return out

    def ssl_loss(self, out):
        (p1, p2), (z1, z2) = [upcast(x) for x in out["p"]], [upcast(x) for x in out["z"]]
        loss = 0.5 * (simsiam_loss(p1, z2.detach()) + simsiam_loss(p2, z1.detach()))
        return loss, {"simsiam": loss.detach()}

    def param_groups(self, optim_cfg):
        return static_predictor_groups(self, super().param_groups(optim_cfg))
