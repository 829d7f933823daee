"""Sharding a global batch across ranks (torchrun): rank r keeps the rows ``shard`` of every global batch.

The gpu and torchvision loaders shard natively (each rank produces only its rows, with the per-sample randomness
one process would give them); ``ShardedBatches`` wraps any other kind (ffcv, dali): it produces the whole global
batch and keeps its rows, exact at the cost of producing the other ranks' rows too.
"""
from __future__ import annotations

from fastpnr.errors import require


def check_shard(shard: slice | None, batch_size: int, drop_last: bool) -> slice | None:
    """A rank's rows of each global batch (None: all); whole batches only, so drop_last is required."""
    if shard is None or (shard.start == 0 and shard.stop == batch_size):
        return None
    require(drop_last, "drop_last", drop_last, "True when a batch is sharded across ranks")
    require(0 <= shard.start < shard.stop <= batch_size, "shard", shard, f"a slice of range(0, {batch_size})")
    return shard


class ShardedBatches:
    """``loader`` (yielding global batches) restricted to the rows ``shard`` of each batch; same ``len`` and
    ``set_epoch``."""

    def __init__(self, loader, shard: slice):
        self.loader, self.shard = loader, shard

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        s = self.shard
        for views, labels, indices in self.loader:
            yield [v[s] for v in views], labels[s], indices[s]

    def __getattr__(self, name):  # epoch, device, ... of the wrapped loader
        return getattr(self.loader, name)
