"""MoCo v2+ (anchors §1.2): EMA encoder with the cosine momentum schedule and a per-view queue."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..losses import moco_loss
from ..losses.pnr_diagnostic import positive_logit
from ..models import mlp
from fastpnr.system.precision import upcast
from .base import Method


class MoCoV2Plus(Method):
    @classmethod
    def check_run_config(cls, run_cfg) -> None:
        require_queue_size("method.queue_size", run_cfg.method.queue_size, run_cfg.optim.batch_size)

    def build_heads(self):
        self.projector = mlp(self.feat_dim, self.cfg.proj_hidden, self.cfg.proj_out, bn=False)
        self.momentum_backbone = self.make_momentum_copy(self.backbone)
        self.momentum_projector = self.make_momentum_copy(self.projector)
        # queue[v] holds the EMA keys of view v, (K, D); random normal init as the anchors (normalized rows).
        self.register_buffer("queue", F.normalize(torch.randn(2, self.cfg.queue_size, self.cfg.proj_out), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def momentum_pairs(self):
        return [(self.backbone, self.momentum_backbone), (self.projector, self.momentum_projector)]

    def forward_views(self, views):
        out = super().forward_views(views)
        out["q"] = [F.normalize(upcast(z), dim=-1) for z in out["z"]]
        with torch.no_grad():
            out["momentum_feats"] = [self.momentum_backbone(v) for v in views]
            out["k"] = [F.normalize(upcast(self.momentum_projector(f)), dim=-1) for f in out["momentum_feats"]]
        # The loss must see the queue as it was before this step's enqueue.
        out["queue"] = self.queue.clone()
        return out

    def ssl_loss(self, out):
        (q1, q2), (k1, k2), queue = out["q"], out["k"], out["queue"]
        t, b = self.cfg.temperature, self.cfg.loss_backend
        loss = 0.5 * (moco_loss(q1, k2, queue[1], temperature=t, backend=b) + moco_loss(q2, k1, queue[0], temperature=t, backend=b))
        # the positive q.k of both views: as MoCo-PNR logs it
        diag = positive_logit(torch.cat([q1, q2]), torch.cat([k2, k1]))
        return loss, {"moco": loss.detach(), **diag}

    def distill_input(self, out):
        return out["q"]  # the anchors feed the normalized q to the distill predictor

    def end_of_step(self, out):
        ring_enqueue(self.queue, self.queue_ptr, [self.dist.gather(k) for k in out["k"]])  # same queue on every rank


def require_queue_size(field: str, size: int, batch_size: int) -> None:
    """A ring queue takes whole batches: its size must be a multiple of the batch, at least one batch (the anchors
    assert ``queue_size % global_batch == 0``; otherwise a wrap overwrites keys of the same step)."""
    if size >= batch_size and size % batch_size == 0:
        return
    lower, upper = max(batch_size, size // batch_size * batch_size), (size // batch_size + 1) * batch_size
    near = f"{lower}" if lower == upper or size < batch_size else f"{lower} or {upper}"
    raise ConfigError(f"{field}={size!r} is invalid with optim.batch_size={batch_size}; allowed: a multiple of the "
                      f"batch size that is >= it (the queue takes whole batches), e.g. {near}")


@torch.no_grad()
def ring_enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: list[torch.Tensor]) -> None:
    """Write ``keys[v]`` (B, D) into ``queue[v]`` (K, D) at rows (ptr + arange(B)) % K; advance ``ptr``. No host sync."""
    b, size = keys[0].shape[0], queue.shape[1]
    idx = (ptr + torch.arange(b, device=queue.device)) % size
    for v, k in enumerate(keys):
        queue[v].index_copy_(0, idx, k.to(queue.dtype))
    ptr.copy_((ptr + b) % size)
