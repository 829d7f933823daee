"""Sharding a global batch across ranks (torchrun): rank r keeps the rows ``shard`` of every global batch.

Every loader kind takes ``shard=`` and reads, decodes and augments only its rows (``rows_of_global_batches`` cuts
the epoch's order); the gpu, torchvision and ffcv kinds also give those rows the per-sample randomness one process
would give them (dali cannot: loaders/dali_loader.py).
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


def rows_of_global_batches(order, batch_size: int, shard: slice | None):
    """An epoch's sample ``order`` (numpy or torch, 1-D) cut into whole global batches of ``batch_size``, keeping the
    rows ``shard`` of each, in order: what a rank reads (the tail that drop_last drops is gone). ``shard=None``: as
    given."""
    if shard is None:
        return order
    full = len(order) // batch_size * batch_size
    return order[:full].reshape(-1, batch_size)[:, shard].reshape(-1)
