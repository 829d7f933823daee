"""loaders/prefetch.py: the next batch is requested before the current one is handed out, on its own stream, with
the stream hand-over (wait_stream, record_stream) in the right order; the batches themselves never change.

CUDA streams do not exist here, so the stream operations are watched through stand-in streams (the module's
`_new_stream`, `_current_stream`, `_stream_context` and `_record` hooks); on CUDA the real path is compared too."""
from __future__ import annotations

import pytest
import torch

import loaders.prefetch as P
from loaders import Prefetcher, make_loader

from .utils import random_dataset


class LoggedLoader:
    """A loader of the contract that logs when each batch is produced (and on which stand-in stream)."""

    def __init__(self, n=4, log=None, device="cpu"):
        self.n, self.log, self.device, self.epoch = n, [] if log is None else log, torch.device(device), 0
        self.view_configs = "the loader's own attribute"
        self.closed = False

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        try:
            for k in range(self.n):
                self.log.append(("produce", k, CURRENT[-1]))
                x = torch.full((2, 3, 4, 4), float(100 * self.epoch + k))
                yield [x, x + 1], torch.tensor([k, k]), torch.tensor([2 * k, 2 * k + 1])
        finally:
            self.closed = True


class FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))

    def __repr__(self):
        return self.name


CURRENT = ["main"]  # the stand-in "current stream" stack


@pytest.fixture
def fake_cuda(monkeypatch):
    """Stand-in streams: one producer ("side"), the caller's "main"; every stream operation goes to `log`."""
    log = []
    main = FakeStream("main", log)

    class Context:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            CURRENT.append(self.stream.name if self.stream is not None else CURRENT[-1])

        def __exit__(self, *exc):
            CURRENT.pop()

    monkeypatch.setattr(P, "_new_stream", lambda device: FakeStream("side", log))
    monkeypatch.setattr(P, "_current_stream", lambda device: side_or_main(CURRENT[-1]))
    monkeypatch.setattr(P, "_stream_context", Context)
    monkeypatch.setattr(P, "_record", lambda t, stream: log.append(("record", int(t.flatten()[0]), stream.name)))
    streams = {"main": main}

    def side_or_main(name):
        return streams.get(name) or FakeStream(name, log)

    return log


def batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return [(torch.stack(v), labels, idx) for v, labels, idx in loader]


@pytest.mark.parametrize("ahead", [None, True])
def test_same_batches_as_the_loader(ahead):
    """CPU default: the loader itself (nothing ahead); one-ahead forced: still the loader's batches, bit for bit."""
    ld = make_loader("gpu", random_dataset(), batch_size=8, num_views=2, device="cpu", seed=0)
    pf = Prefetcher(make_loader("gpu", random_dataset(), batch_size=8, num_views=2, device="cpu", seed=0), "cpu",
                    ahead=ahead)
    assert pf.ahead == bool(ahead) and pf.stream is None and len(pf) == len(ld) == 12
    assert pf.view_configs == ld.view_configs and pf.epoch == 0  # the wrapped loader's attributes
    for epoch in (0, 1):
        for a, b in zip(batches(ld, epoch), batches(pf, epoch)):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert pf.epoch == 1


def test_one_ahead_requests_the_next_batch_before_handing_out_the_current():
    log = []
    inner = LoggedLoader(n=3, log=log)
    pf = Prefetcher(inner, "cpu", ahead=True)
    pf.set_epoch(2)
    got = []
    for views, labels, _ in pf:
        log.append(("consume", int(labels[0]), "main"))
        got.append(float(views[0][0, 0, 0, 0]))
    assert got == [200.0, 201.0, 202.0]  # the loader's batches, in its order, of the epoch set through the wrapper
    assert [e[:2] for e in log] == [("produce", 0), ("produce", 1), ("consume", 0), ("produce", 2), ("consume", 1),
                                    ("consume", 2)]
    assert inner.closed


def test_leaving_early_closes_the_wrapped_loader():
    inner = LoggedLoader(n=5)
    pf = Prefetcher(inner, "cpu", ahead=True)
    it = iter(pf)
    next(it)
    it.close()
    assert inner.closed and len(inner.log) == 2  # batch 0 handed out, batch 1 produced ahead, nothing more


def test_stream_hand_over_order(fake_cuda):
    """Producer waits for the caller at the epoch start; each batch is produced on the side stream; before batch k
    is handed out the caller's stream waits for the side stream and records every tensor of batch k; batch k+1 is
    requested after that hand-over and before the caller gets batch k."""
    log = fake_cuda
    inner = LoggedLoader(n=2, log=log, device="cuda")
    pf = Prefetcher(inner, torch.device("cuda"))
    assert pf.ahead and pf.stream.name == "side"
    for views, labels, _ in pf:
        log.append(("consume", int(labels[0]), CURRENT[-1]))
    k0, k1 = [("record", v, "main") for v in (0, 1, 0, 0)], [("record", v, "main") for v in (1, 2, 1, 2)]
    assert log == [("wait", "side", "main"),                # the epoch starts after what the caller queued
                   ("produce", 0, "side"),
                   ("wait", "main", "side"), *k0,           # hand-over of batch 0: views (0, 1), labels, indices
                   ("produce", 1, "side"),                  # batch 1 queued before step 0 is launched
                   ("consume", 0, "main"),
                   ("wait", "main", "side"), *k1,
                   ("consume", 1, "main")]


def test_batch_tensors_walks_nested_batches():
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    assert [float(t) for t in P.batch_tensors(([a, b], {"x": c}, 3, None))] == [0.0, 1.0, 2.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_prefetched_batches_equal_plain_ones():
    def make():
        return make_loader("gpu", random_dataset(n=256), batch_size=32, num_views=2, device="cuda", seed=3)

    plain, pf = make(), Prefetcher(make(), "cuda")
    assert pf.ahead and pf.stream is not None
    for a, b in zip(batches(plain, 1), batches(pf, 1)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
