"""MoCo v2+ (anchors §1.2): EMA encoder with the cosine momentum schedule and a per-view queue."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import require
from ..losses import moco_loss
from ..models import mlp
from .base import Method, MethodConfig, check_tau


@dataclass(frozen=True)
class MoCoV2PlusConfig(MethodConfig):
    temperature: float = 0.2
    queue_size: int = 65536
    base_tau: float = 0.99
    final_tau: float = 0.999
    loss_backend: str = "torch"

    def __post_init__(self):
        super().__post_init__()
        require(self.temperature > 0, "method.temperature", self.temperature, "> 0")
        require(self.queue_size >= 1, "method.queue_size", self.queue_size, ">= 1")
        check_tau(self)


class MoCoV2Plus(Method):
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
        out["q"] = [F.normalize(z.float(), dim=-1) for z in out["z"]]
        with torch.no_grad():
            out["k"] = [F.normalize(self.momentum_projector(self.momentum_backbone(v)).float(), dim=-1) for v in views]
        # The loss must see the queue as it was before this step's enqueue.
        out["queue"] = self.queue.clone()
        return out

    def ssl_loss(self, out):
        (q1, q2), (k1, k2), queue = out["q"], out["k"], out["queue"]
        t = self.cfg.temperature
        loss = 0.5 * (moco_loss(q1, k2, queue[1], temperature=t) + moco_loss(q2, k1, queue[0], temperature=t))
        return loss, {"moco": loss.detach()}

    @torch.no_grad()
    def enqueue(self, keys: list[torch.Tensor]) -> None:
        """Ring-buffer write without host sync: positions (ptr + arange(B)) % K."""
        b = keys[0].shape[0]
        idx = (self.queue_ptr + torch.arange(b, device=self.queue.device)) % self.cfg.queue_size
        for v, k in enumerate(keys):
            self.queue[v].index_copy_(0, idx, k.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + b) % self.cfg.queue_size)

    def end_of_step(self, out):
        self.enqueue(out["k"])
