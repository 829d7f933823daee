"""MoCo v3 (Chen, Xie & He, ICCV 2021): in-batch keys of an EMA encoder, a predictor, the symmetrized 2t-scaled loss.

Heads as facebookresearch/moco-v3 moco/builder.py (``MoCo_ViT``, ``MoCo_ResNet``): Linear layers without bias, BN
and ReLU on the hidden layers; the projector (3 layers on a ViT, 2 on a ResNet) ends in a BN without affine
parameters; so does the 2-layer predictor on a ViT, while on a ResNet it ends in the plain Linear. The momentum encoder (backbone + projector, no predictor) follows the cosine schedule from ``base_tau`` to
``final_tau`` = 1 (their ``--moco-m-cos``), updated after the optimizer step as every fastpnr EMA method (theirs
updates before the keys of the next step are computed: the same sequence of weights).
"""
from __future__ import annotations

from ..losses import mocov3_loss
from ..models import is_vit, mlp
from fastpnr.system.precision import upcast
from .byol import BYOL


class MoCoV3(BYOL):
    """BYOL's networks and forward (online backbone, projector, predictor ``p``; EMA backbone and projector giving the
    keys ``k``) with MoCo v3's heads and contrastive loss."""

    def build_heads(self):
        c, vit = self.cfg, is_vit(self.model_cfg.backbone)
        layers = c.proj_layers or (3 if vit else 2)
        self.projector = mlp(self.feat_dim, c.proj_hidden, c.proj_out, layers=layers, bias=False, last_bn=True,
                             last_bn_affine=False)
        self.predictor = mlp(c.proj_out, c.pred_hidden, c.proj_out, bias=False, last_bn=vit, last_bn_affine=False,
                             last_bias=False)
        self.momentum_backbone = self.make_momentum_copy(self.backbone)
        self.momentum_projector = self.make_momentum_copy(self.projector)

    def ssl_loss(self, out):
        # the queries are the predictor's outputs p; the global batch's keys are the negatives (their
        # concat_all_gather), and its queries too, so that 2 ranks = 1 process
        q1, q2, k1, k2 = self.dist.loss_batch(*(upcast(x) for x in (*out["p"], *out["k"])))
        loss = mocov3_loss(q1, q2, k1, k2, temperature=self.cfg.temperature, backend=self.cfg.loss_backend)
        return loss, {"mocov3": loss.detach()}
