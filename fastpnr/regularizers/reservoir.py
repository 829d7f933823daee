"""A reservoir buffer of dataset INDICES (never image copies) over the stream of training images, for replay.

Reservoir sampling (Vitter's algorithm R, as mammoth's ``reservoir`` in divyam3897/UCL utils/buffer.py L12-26): the
item that arrives after ``c`` others goes to slot ``c`` while ``c < size``; afterwards it replaces slot ``r`` when
``r < size``, with ``r`` uniform in ``{0, ..., c}``, so every item seen so far is in the buffer with probability
``size / seen``. Here a whole batch is placed at once with tensor ops (no per-sample Python, no host sync); items of
one batch that pick the same slot resolve as the one-at-a-time loop does: the later item wins.

The buffer's slots and its counter are module buffers, so they live in the owner's ``state_dict`` (checkpoints,
``broadcast_module``). Its randomness comes only from the generators passed in: under torchrun every rank adds the
same global batch (``dist.gather`` of its rows) with an identically seeded generator, so every rank holds the same
buffer.
"""
from __future__ import annotations

import torch
from torch import nn

from fastpnr.errors import require


def reservoir_targets(seen: torch.Tensor, num_new: int, size: int, u: torch.Tensor) -> torch.Tensor:
    """Slot of each of ``num_new`` arriving items, or -1 (dropped); ``seen`` items came before them (0-d tensor).

    Item j arrives after ``c_j = seen + j`` others: ``slot_j = c_j`` if ``c_j < size``, else ``r_j = floor(u_j (c_j + 1))``
    (uniform in ``{0..c_j}``, ``u_j`` uniform in [0, 1), float64) when ``r_j < size``, else -1."""
    require(u.shape == (num_new,) and u.dtype == torch.float64, "u", (tuple(u.shape), u.dtype),
            f"a float64 tensor of shape ({num_new},)")
    c = seen + torch.arange(num_new, device=u.device)
    r = torch.floor(u * (c + 1).to(torch.float64)).long().clamp(max=c)  # clamp: u < 1 always, this guards rounding
    return torch.where(c < size, c, torch.where(r < size, r, torch.full_like(r, -1)))


def reservoir_update(slots: torch.Tensor, seen: torch.Tensor, new: torch.Tensor, u: torch.Tensor):
    """-> (slots', seen'): ``slots`` (size,) int64 dataset indices (-1: empty) after the items ``new`` (n,) arrive.

    Within the batch the last item aimed at a slot wins (``scatter_reduce`` amax of arrival positions: order-free and
    deterministic), as the sequential loop ``slots[target_j] = new_j`` for j = 0..n-1."""
    winner = reservoir_winners(slots.shape[0], seen, new.shape[0], u)
    return take_winners(slots, new, winner), seen + new.shape[0]


def reservoir_winners(size: int, seen: torch.Tensor, num_new: int, u: torch.Tensor) -> torch.Tensor:
    """(size,) int64: per slot the arriving item (its position 0..n-1) that ends in it, -1 where none does."""
    targets = reservoir_targets(seen, num_new, size, u)
    position = torch.arange(num_new, device=u.device)
    winner = torch.full((size + 1,), -1, dtype=torch.long, device=u.device)  # slot `size`: the dropped items
    winner.scatter_reduce_(0, torch.where(targets >= 0, targets, size), position, reduce="amax")
    return winner[:size]


def take_winners(old: torch.Tensor, new: torch.Tensor, winner: torch.Tensor) -> torch.Tensor:
    """``old`` (size, ...) with the rows that ``winner`` names replaced by those rows of ``new``."""
    keep = (winner < 0).reshape(-1, *([1] * (old.dim() - 1)))
    return torch.where(keep, old, new[winner.clamp(min=0)])


def sample_without_replacement(slots: torch.Tensor, n: int, u: torch.Tensor) -> torch.Tensor:
    """``n`` distinct filled slots' indices, uniformly (``np.random.choice(filled, n, replace=False)`` of UCL
    utils/buffer.py L96-100): the filled slots sorted by a uniform key ``u`` (size,), empty ones last. The caller
    ensures at least ``n`` slots are filled."""
    return slots[sample_positions(slots, n, u)]


def sample_positions(slots: torch.Tensor, n: int, u: torch.Tensor) -> torch.Tensor:
    """The slots (positions) ``sample_without_replacement`` draws."""
    key = u + (slots < 0).to(u.dtype) * 2.0  # u < 1: every empty slot sorts after every filled one
    return torch.argsort(key)[:n]


class ReservoirBuffer(nn.Module):
    """``size`` dataset indices (``slots``; -1 empty) and the number of images streamed so far (``seen``).

    ``seen`` has a host mirror, so the loop asks how full the buffer is without reading the device (the stream's
    length is known on the host: every step adds a global batch)."""

    def __init__(self, size: int):
        super().__init__()
        require(isinstance(size, int) and size >= 1, "regularizer.buffer_size", size, "an int >= 1")
        self.size = size
        self.register_buffer("slots", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self._seen_host = 0

    @property
    def seen_host(self) -> int:
        return self._seen_host

    def filled(self) -> int:
        """How many slots hold an index (host value, no sync)."""
        return min(self._seen_host, self.size)

    @torch.no_grad()
    def add(self, indices: torch.Tensor, gen: torch.Generator) -> None:
        """Stream the global batch ``indices`` (n,) through the reservoir: n float64 draws from ``gen``."""
        u = torch.rand(indices.shape[0], generator=gen, device=self.slots.device, dtype=torch.float64)
        slots, seen = reservoir_update(self.slots, self.seen, indices.to(self.slots.device, torch.long), u)
        self.slots.copy_(slots)
        self.seen.copy_(seen)
        self._seen_host += int(indices.shape[0])

    def between_passes(self) -> None:
        """After a step that is not its batch's last pass (``data.batch_passes``): the batch enters only after the
        last one. Nothing to do here; ``FeatureReservoir`` refreshes the replayed slots' stored projections."""

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` distinct buffered dataset indices (``size`` float64 draws from ``gen``); needs ``filled() >= n``."""
        require(n <= self.filled(), "replay batch", n, f"<= the {self.filled()} images in the buffer")
        u = torch.rand(self.size, generator=gen, device=self.slots.device, dtype=torch.float64)
        return sample_without_replacement(self.slots, n, u)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Called for this module alone and as part of its owner's state_dict (a checkpoint): refresh the host mirror.
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._seen_host = int(self.seen)
