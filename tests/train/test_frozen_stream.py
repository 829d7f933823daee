"""The frozen previous model on its own CUDA stream (issue 6): the fork/join order of the trainer's step, watched
through stand-in streams (there is no CUDA here), and the same values as on one stream."""
from __future__ import annotations

import pytest
import torch

from tests.train.test_graph_step import _batches, _build

CURRENT = ["main"]


class FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))


@pytest.fixture
def fake_streams(monkeypatch):
    log = []
    streams = {"main": FakeStream("main", log)}

    class Context:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            CURRENT.append(self.stream.name)

        def __exit__(self, *exc):
            CURRENT.pop()

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams.get(CURRENT[-1]))
    monkeypatch.setattr(torch.cuda, "stream", Context)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda t, s: log.append(("record", id(t), s.name)))
    return log


def _watch(trainer, log):
    """Log on which stand-in stream the frozen forward, the current model's forward and the penalty run."""
    reg, method = trainer.regularizer, trainer.method
    frozen_forward, forward_views, penalty = reg.frozen_forward, method.forward_views, reg.penalty
    outputs = []

    def frozen(views):
        log.append(("frozen_forward", CURRENT[-1]))
        out = frozen_forward(views)
        outputs.append(out)
        return out

    def forward(views):
        log.append(("forward_views", CURRENT[-1]))
        return forward_views(views)

    def pen(m, out, frozen_out):
        log.append(("penalty", CURRENT[-1]))
        return penalty(m, out, frozen_out)

    reg.frozen_forward, method.forward_views, reg.penalty = frozen, forward, pen
    return outputs


@pytest.mark.parametrize("method_name, reg_name", [("simclr", "pnr"), ("byol", "cassle")])
def test_frozen_forward_forks_and_joins_around_the_current_forward(fake_streams, method_name, reg_name):
    log = fake_streams
    one, _ = _build(method_name, reg_name, cuda_graph=False, probe="off")
    two, _ = _build(method_name, reg_name, cuda_graph=False, probe="off")
    assert one.side_stream is None  # CPU: one stream; the stand-in side stream below is what CUDA would create
    two.side_stream = FakeStream("side", log)
    outputs = _watch(two, log)
    (views, labels, pb), = _batches(1, "off")
    ref = one.step(views, labels, pb, 0, 1)
    got = two.step(views, labels, pb, 0, 1)
    frozen_ids = [id(t) for t in outputs[0]["z"]]
    assert len(frozen_ids) == 2
    assert log == [("wait", "side", "main"),         # fork: the side stream starts after the batch is ready
                   ("frozen_forward", "side"),        # the frozen model is launched first, on its own stream,
                   ("forward_views", "main"),         # then the current model on the main one: they overlap
                   ("wait", "main", "side"),          # join before anything reads the frozen outputs
                   *[("record", i, "main") for i in frozen_ids],  # their memory is in use on the main stream too
                   ("penalty", "main")]
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)


def test_one_stream_flag_runs_the_frozen_model_inline(fake_streams):
    log = fake_streams
    trainer, _ = _build("simclr", "pnr", cuda_graph=False, probe="off")
    assert trainer.side_stream is None  # train.frozen_stream off, or no CUDA: one stream
    _watch(trainer, log)
    (views, labels, pb), = _batches(1, "off")
    trainer.step(views, labels, pb, 0, 1)
    assert log == [("frozen_forward", "main"), ("forward_views", "main"), ("penalty", "main")]
