"""Pseudo-Negative Regularization (Cha, Cho & Moon, ICML 2024), anchors §2.

- SimCLR-PNR, MoCo-PNR and MoCo v3-PNR (symmetric; MoCo v3's is fastpnr's own, ``losses/pnr_mocov3.py``): from task 1 on the base loss is *replaced* by the PNR loss, whose main term
  gets the previous model's embeddings as extra negatives and whose regularization term gets the current ones.
- BYOL-, Barlow-, VICReg-PNR (asymmetric): the base loss is kept; the distill-predicted current projection is pulled
  toward the frozen output of the same view and pushed from the frozen output of the other view.
- SimSiam / GSG methods use the BYOL-style asymmetric form (fastpnr's own combination: no anchor has it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import pnr_moco_loss, pnr_mocov3_loss, pnr_simclr_loss
from ..losses.pnr_barlow import pnr_barlow_terms
from ..losses.pnr_byol import pnr_byol_terms
from ..losses.pnr_vicreg import pnr_vicreg_terms
from ..losses.pnr_diagnostic import pnr_moco_logits, pnr_simclr_logits, pull_push
from fastpnr.system.precision import upcast
from .base import DistillRegularizer
from ..regularizer_configs import PNRConfig

# (pos_weight = distill_lamb, neg_weight = negative_lamb) defaults as shipped for CIFAR-100 (anchors §2.6).
DEFAULT_WEIGHTS = {"byol": (1.0, 0.5), "simsiam": (1.0, 0.5), "barlow": (1.0, 1.0), "vicreg": (25.0, 23.0)}
CONTRASTIVE = ("simclr", "mocov2plus", "mocov3")


class PNR(DistillRegularizer):
    def __init__(self, cfg: PNRConfig, method):
        super().__init__(cfg, method)
        self.replaces_ssl_loss = self.kind in CONTRASTIVE
        if self.kind not in CONTRASTIVE:
            self.pos_weight, self.neg_weight = pnr_weights(self.kind, cfg)
            self.distill_weight = self.pos_weight
            check_pnr_weights(self.kind, self.pos_weight, self.neg_weight)
        if self.kind == "mocov2plus":
            size = cfg.frozen_queue_size or method.cfg.queue_size
            # Q': the frozen model's embeddings, slot v holds view v; random at task 1 as in the anchors (strict=False load).
            self.register_buffer("frozen_queue", F.normalize(torch.randn(2, size, method.proj_dim), dim=-1))
            self.register_buffer("frozen_queue_ptr", torch.zeros((), dtype=torch.long))

    def penalty(self, method, out, frozen_out):
        f1, f2 = (upcast(f) for f in frozen_out["z"])
        u1, u2 = (upcast(u) for u in self.predict(method, out))
        if self.kind == "simclr":
            # the global batch: its frozen embeddings are pseudo-negatives too
            z1, z2, u1, u2, f1, f2 = self.dist.loss_batch(*(upcast(z) for z in out["z"]), u1, u2, f1, f2)
            loss = pnr_simclr_loss(z1, z2, u1, u2, f1, f2, temperature=self.cfg.distill_temperature,
                                   backend=method.cfg.loss_backend)
            return loss, {"pnr_simclr": loss.detach(), **pnr_simclr_logits(z1, z2, f1, f2)}
        if self.kind == "mocov3":
            # the global batch: its momentum keys and frozen embeddings are the negatives
            batch = self.dist.loss_batch(*(upcast(x) for x in (*out["p"], *out["k"])), u1, u2, f1, f2)
            loss = pnr_mocov3_loss(*batch, temperature=method.cfg.temperature,
                                   distill_temperature=self.cfg.distill_temperature, backend=method.cfg.loss_backend)
            return loss, {"pnr_mocov3": loss.detach()}
        if self.kind == "mocov2plus":
            (q1, q2), (k1, k2), queue = out["q"], out["k"], out["queue"]
            p1, p2 = F.normalize(u1, dim=-1), F.normalize(u2, dim=-1)
            n1, n2 = F.normalize(f1, dim=-1), F.normalize(f2, dim=-1)
            frozen_queue = self.frozen_queue.clone()  # the loss sees the pre-update queues
            kw = dict(temperature=method.cfg.temperature, distill_temperature=self.cfg.distill_temperature,
                      backend=method.cfg.loss_backend)
            loss = 0.5 * (pnr_moco_loss(q1, k2, p1, n1, queue[1], frozen_queue[1], **kw)
                          + pnr_moco_loss(q2, k1, p2, n2, queue[0], frozen_queue[0], **kw))
            frozen_out["normalized"] = [n1, n2]
            return loss, {"pnr_moco": loss.detach(), **pnr_moco_logits([q1, q2], [k1, k2], [n1, n2], frozen_queue)}
        if self.kind == "barlow":
            u1, u2, f1, f2 = self.dist.barlow_batch(u1, u2, f1, f2)  # batch-standardized: the global batch
            pull, push = pnr_barlow_terms(u1, u2, f1, f2, pos_weight=self.pos_weight, neg_weight=self.neg_weight,
                                          lamb=self.cfg.barlow_lamb, scale=self.cfg.barlow_scale,
                                          correlation=self.dist.barlow_correlation())
        elif self.kind == "vicreg":
            pull, push = pnr_vicreg_terms(u1, u2, f1, f2, pos_weight=self.pos_weight, neg_weight=self.neg_weight)
        else:  # byol, simsiam and the GSG methods
            pull, push = pnr_byol_terms(u1, u2, f1, f2, pos_weight=self.pos_weight, neg_weight=self.neg_weight)
        loss = pull - push  # as pnr_*_regularizer
        return loss, {"pnr": loss.detach(), **pull_push(pull, push)}

    def end_of_step(self, out, frozen_out):
        if self.kind == "mocov2plus" and "normalized" in frozen_out:
            from ..methods.mocov2plus import ring_enqueue

            ring_enqueue(self.frozen_queue, self.frozen_queue_ptr, [self.dist.gather(n) for n in frozen_out["normalized"]])

    @classmethod
    def check_run_config(cls, run_cfg) -> None:
        """Checks across sections, run when the configuration is built (before any folder or data is touched)."""
        from ..methods import METHODS
        from ..methods.mocov2plus import require_queue_size

        kind = getattr(METHODS[run_cfg.method.name][0], "regularizer_kind", run_cfg.method.name)
        cfg = run_cfg.regularizer
        if kind not in CONTRASTIVE:
            check_pnr_weights(kind, *pnr_weights(kind, cfg))
        if kind == "mocov2plus" and cfg.frozen_queue_size is not None:
            require_queue_size("regularizer.frozen_queue_size", cfg.frozen_queue_size, run_cfg.optim.batch_size)


def pnr_weights(kind: str, cfg: PNRConfig) -> tuple[float, float]:
    """(pos_weight, neg_weight) of the asymmetric PNR regularizer: the configured ones, else the method's defaults."""
    pos, neg = DEFAULT_WEIGHTS.get(kind, DEFAULT_WEIGHTS["byol"])
    return (pos if cfg.pos_weight is None else cfg.pos_weight), (neg if cfg.neg_weight is None else cfg.neg_weight)


def check_pnr_weights(kind: str, pos_weight: float, neg_weight: float) -> None:
    # lambda_d |u-a|^2 - lambda_n |u-b|^2 is unbounded below unless lambda_n < lambda_d (anchors §2.5).
    if kind == "vicreg" and not neg_weight < pos_weight:
        raise ConfigError(f"regularizer.neg_weight={neg_weight!r} is invalid for VICReg-PNR; allowed: "
                          f"< regularizer.pos_weight ({pos_weight}), else the loss is unbounded below")
