"""Produce the next batch while the current training step runs (issue 6: augmentation overlapped with the step).

`Prefetcher(loader, device)` wraps a loader of the contract (`len()`, `set_epoch(e)`, iterating `(views, labels,
indices)`). On CUDA it runs the wrapped loader's work for batch k+1 (gather, host-to-device copies, the batched
augmentation of `gpu`/`ffcv`, DALI's outputs) on its own stream, queued *before* the caller launches the step of
batch k, so the two run side by side on the device instead of one after the other on one stream:

1. at the start of an epoch the producer stream waits for the caller's stream (what was queued before: uploads,
   the previous epoch's work);
2. batch k is handed over: the caller's current stream waits for the producer stream (`wait_stream`), and every
   tensor of the batch is marked as used by the caller's stream (`record_stream`), so the caching allocator does
   not hand its memory back to the producer while the step still reads it;
3. only then is batch k+1 requested (on the producer stream), and batch k is returned.

Nothing waits on the host. The batches are the loader's own, in the loader's order: a loader's batches are a
function of (seed, epoch), not of the stream that computes them, so prefetching changes no value (and resume stays
exact). Off CUDA there is no second stream to overlap with, so by default the wrapper is the loader itself, batch
for batch; `ahead=True` still runs the one-ahead order there (tests).
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

_END = object()


# The stream operations, as module functions so tests can watch them on a machine without CUDA.
def _new_stream(device: torch.device):
    return torch.cuda.Stream(device)


def _current_stream(device: torch.device):
    return torch.cuda.current_stream(device)


def _stream_context(stream):
    return torch.cuda.stream(stream) if stream is not None else nullcontext()


def _record(tensor: torch.Tensor, stream) -> None:
    if tensor.device.type == "cuda":
        tensor.record_stream(stream)


def batch_tensors(obj):
    """Every tensor in a (nested) batch of lists, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from batch_tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from batch_tensors(item)


class Prefetcher:
    """A loader whose next batch is produced on a side CUDA stream while the caller's step runs (module docstring).

    loader: any loader of the contract. device: where its batches live (default `loader.device`).
    ahead: request batch k+1 before handing out batch k (default: on CUDA only, where a second stream makes it
    overlap). Attributes other than `__len__`, `set_epoch`, `__iter__` are the wrapped loader's.
    """

    def __init__(self, loader, device=None, ahead: bool | None = None):
        self.loader = loader
        self.device = torch.device(device if device is not None else loader.device)
        cuda = self.device.type == "cuda"
        self.ahead = cuda if ahead is None else bool(ahead)
        self.stream = _new_stream(self.device) if cuda and self.ahead else None

    def __getattr__(self, name):
        if name == "loader":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        if not self.ahead:
            yield from self.loader
            return
        it = iter(self.loader)
        if self.stream is not None:
            self.stream.wait_stream(_current_stream(self.device))
        try:
            nxt = self._produce(it)
            while nxt is not _END:
                batch = nxt
                self._hand_over(batch)
                nxt = self._produce(it)  # batch k+1, queued before the caller launches step k
                yield batch
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()  # the wrapped loader stops its threads/workers when the caller leaves early

    def _produce(self, it):
        with _stream_context(self.stream):
            return next(it, _END)

    def _hand_over(self, batch) -> None:
        if self.stream is None:
            return
        consumer = _current_stream(self.device)
        consumer.wait_stream(self.stream)
        for t in batch_tensors(batch):
            _record(t, consumer)


__all__ = ["Prefetcher", "batch_tensors"]
