"""CLA, Continual Latent Alignment (Cignoni et al., CoLLAs 2025, arXiv 2507.10434), for online task-free streams.

Both variants add ``omega * L_align`` to the method's SSL loss (``fastpnr.losses.cla``): a small MLP predictor g
(``mlp(D, regularizer.distill_hidden, D)``, its own parameter group as CaSSLe's) maps the current projection to the
"past" one, and the alignment loss is the method's own SSL loss in CaSSLe's form.

- ``cla_e``: the past is an exponential moving average of the online encoder + projector, updated after every step,
  ``theta' <- m theta' + (1 - m) theta`` (``regularizer.ema_momentum``; buffers, the BN statistics, copied). It is
  its own copy: with BYOL or MoCo, whose target network is another EMA, there are two. Active from the first step
  (the EMA starts as a copy of the initial model); no boundary is needed.
- ``cla_r``: ER's reservoir (``regularizer.replay er``: a buffer batch joins each batch, ``replay_loader.py``) whose
  slots also keep each image's projection (``method.distill_input``: the first view's, or with
  ``regularizer.stored_projection mean`` the views' mean, as the authors) from the step it entered
  (``FeatureReservoir``); the replayed rows' current projections of both views, through g, are aligned to the stored
  ones. With ``regularizer.stored_refresh`` alpha < 1 (the authors' command line: 0.5) each replay moves the stored
  projection towards the views' mean of the current ones: ``stored <- alpha stored + (1 - alpha) current``. Active
  once the buffer holds a replay batch.
"""
from __future__ import annotations

import torch

from ..errors import require
from fastpnr.system.precision import upcast
from .base import Regularizer, distill_lr_scale, distill_param_groups, method_kind
from .cassle import CaSSLe
from ..regularizer_configs import CLAEConfig, CLARConfig
from .reservoir import ReservoirBuffer, reservoir_winners, sample_positions, take_winners

class CLAE(CaSSLe):
    """CLA-E: CaSSLe's distiller against an EMA of the online model instead of a frozen previous one."""

    log_name = "cla"

    def __init__(self, cfg: CLAEConfig, method):
        super().__init__(cfg, method)
        self._online = [method.backbone, method.projector]  # a list: not registered (its weights are the method's)

    def begin_task(self, method, task: int) -> None:
        Regularizer.begin_task(self, method, task)
        if task == 0:  # the stream's start: the EMA begins as the initial model; known boundaries change nothing
            self.take_frozen(method)
        self.frozen.train(self.cfg.frozen_bn == "train")
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def stream_step(self, method, step: int) -> None:
        """No refresh: the EMA follows the online model every step."""

    @torch.no_grad()
    def end_of_step(self, out, frozen_out) -> None:
        m = self.cfg.ema_momentum
        for past, online in zip((self.frozen.backbone, self.frozen.projector), self._online):
            ema_update(list(past.parameters()), list(online.parameters()), m)
            for b_past, b_online in zip(past.buffers(), online.buffers()):
                b_past.copy_(b_online)


def ema_update(past: list, online: list, momentum: float) -> None:
    """``past <- momentum * past + (1 - momentum) * online``, in place, one foreach call (no sync)."""
    torch._foreach_mul_(past, momentum)
    torch._foreach_add_(past, [p.to(q.dtype) for p, q in zip(online, past)], alpha=1.0 - momentum)


class FeatureReservoir(ReservoirBuffer):
    """The reservoir of dataset indices plus, per slot, the projection the image had when it entered.

    ``pending``: the projections of the step's batch (this rank's rows; set in ``end_of_step``, checkpointed: the
    batch enters after the step, when the loader asks for the next one); ``gather`` makes them the global batch's.
    ``sample`` keeps the drawn slots' projections in ``picked`` for the step's alignment and their slots in
    ``positions``; ``replayed_now`` (this rank's replayed rows' current projections, set in ``end_of_step``) refreshes
    those slots, ``stored <- refresh * stored + (1 - refresh) * now``, before the batch enters (``refresh`` 1: never)."""

    def __init__(self, size: int, dim: int, refresh: float = 1.0):
        super().__init__(size)
        self.refresh = float(refresh)
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("pending", torch.zeros(0, dim))
        self.register_buffer("positions", torch.zeros(0, dtype=torch.long))
        self.register_buffer("replayed_now", torch.zeros(0, dim))
        self.gather = lambda x: x
        self.picked = None

    @torch.no_grad()
    def add(self, indices: torch.Tensor, gen: torch.Generator) -> None:
        self._refresh_replayed()
        u = torch.rand(indices.shape[0], generator=gen, device=self.slots.device, dtype=torch.float64)
        winner = reservoir_winners(self.size, self.seen, indices.shape[0], u)
        feats = self.gather(self.pending).to(self.features.dtype)
        require(feats.shape[0] == indices.shape[0], "pending projections", feats.shape[0],
                f"{indices.shape[0]} (one per image entering the buffer)")
        self.slots.copy_(take_winners(self.slots, indices.to(self.slots.device, torch.long), winner))
        self.features.copy_(take_winners(self.features, feats, winner))
        self.seen.add_(indices.shape[0])
        self._seen_host += int(indices.shape[0])

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        require(n <= self.filled(), "replay batch", n, f"<= the {self.filled()} images in the buffer")
        u = torch.rand(self.size, generator=gen, device=self.slots.device, dtype=torch.float64)
        positions = sample_positions(self.slots, n, u)
        rows = self.features[positions]
        if self.refresh < 1.0:
            self.positions = positions
        if self.picked is None or self.picked.shape != rows.shape:
            self.picked = rows
        else:  # in place: a captured CUDA graph reads this tensor's address
            self.picked.copy_(rows)
        return self.slots[positions]

    def between_passes(self) -> None:
        """Each pass's replay refreshes its slots (the authors' ``update_features`` in every pass's
        ``after_forward``); the batch itself enters after its last pass, with that pass's projections."""
        self._refresh_replayed()

    def _refresh_replayed(self) -> None:
        """The last replay's slots move towards their rows' current projections (once: the slots are then cleared)."""
        if self.refresh >= 1.0 or self.positions.numel() == 0 or self.replayed_now.numel() == 0:
            return
        now = self.gather(self.replayed_now).to(self.features.dtype)
        require(now.shape[0] == self.positions.shape[0], "replayed projections", now.shape[0],
                f"{self.positions.shape[0]} (one per replayed image)")
        self.features[self.positions] = self.refresh * self.features[self.positions] + (1.0 - self.refresh) * now
        self.positions = self.positions[:0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("pending", "positions", "replayed_now"):  # sized by the batch: not known at construction
            key = prefix + name
            if key in state_dict:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CLAR(Regularizer):
    """CLA-R: ER plus the alignment of the replayed images' current projections to their stored ones."""

    def __init__(self, cfg: CLARConfig, method):
        super().__init__(cfg, method)
        from ..models import mlp

        dim = method.proj_dim
        self.replay_buffer = FeatureReservoir(cfg.buffer_size, dim, refresh=cfg.stored_refresh)
        self.replay_buffer.gather = lambda x: self.dist.gather(x)  # self.dist: set by the run after construction
        self.distill_predictor = mlp(dim, cfg.distill_hidden, dim)
        self.kind = method_kind(method)
        self._distill_input = method.distill_input  # what is stored and aligned (MoCo: the normalized q)

    @property
    def active(self) -> bool:
        """Once the loader replays (it has drawn from the buffer; from then on every step): no sync."""
        return self.replay_buffer.picked is not None

    def _replayed(self) -> torch.Tensor:
        """The stored projections of this step's replayed rows on this rank (the ReplayLoader's shard)."""
        stored = self.replay_buffer.picked
        return stored[self.dist.shard(stored.shape[0])] if self.dist.enabled else stored

    def param_groups(self, optim_cfg):
        return distill_param_groups(self.distill_predictor, optim_cfg, distill_lr_scale(self.kind, self.cfg.weight))

    def penalty(self, method, out, frozen_out):
        stored = self._replayed()
        r = stored.shape[0]
        z1, z2 = (z[-r:] for z in method.distill_input(out)[:2])  # the replayed rows follow the current ones
        u1, u2 = (upcast(self.distill_predictor(z)) for z in (z1, z2))
        f = upcast(stored)
        if self.kind in ("simclr", "mocov2plus", "barlow"):  # batch-coupled: the global batch
            u1, u2, f1, f2 = self.dist.loss_batch(u1, u2, f, f)
        else:
            f1 = f2 = f
        c = self.cfg
        loss = c.weight * alignment(self.kind, u1, u2, f1, f2, c)
        return loss, {"cla": loss.detach()}

    @torch.no_grad()
    def end_of_step(self, out, frozen_out) -> None:
        """The current rows' projections (first view, or the views' mean) wait to enter the buffer, and the replayed
        rows' views' mean to refresh their slots (both after the step, ``FeatureReservoir``)."""
        z1, z2 = (z.detach().float() for z in self._distill_input(out)[:2])
        r = self._replayed().shape[0] if self.active else 0
        mean = 0.5 * (z1 + z2)
        stored = mean if self.cfg.stored_projection == "mean" else z1
        self.replay_buffer.pending = stored[:stored.shape[0] - r]
        if r and self.cfg.stored_refresh < 1.0:
            self.replay_buffer.replayed_now = mean[stored.shape[0] - r:]

    def stream_step(self, method, step: int) -> None:
        """Nothing to refresh: the past is in the buffer."""


def alignment(kind, u1, u2, f1, f2, c) -> torch.Tensor:
    from ..losses import alignment_loss

    return alignment_loss(kind, u1, u2, f1, f2, temperature=c.distill_temperature, barlow_lamb=c.barlow_lamb,
                          barlow_scale=c.barlow_scale, criterion=c.align_criterion)
