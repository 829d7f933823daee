"""The capturable step through ``GraphStep`` (on CPU: eager from the static buffers) against the plain eager step."""
from __future__ import annotations

import copy
import math
import dataclasses

import pytest
import torch

from fastpnr.config import ModelConfig, OptimConfig, TrainConfig
from fastpnr.errors import ConfigError
from fastpnr.train.graph import FP16_REASON, GraphStep, capture_blocker
from fastpnr.methods import METHODS, build_method
from fastpnr.train.optim import build_optimizer, set_lr
from fastpnr.regularizers import REGULARIZERS, build_regularizer
from fastpnr.train.trainer import Trainer

# fp32 on CPU: both paths run the same ops (tensor lr and tau hold the floats the eager path uses): same bits
TOL = dict(rtol=0, atol=0)
B, SIZE, STEPS = 8, 8, 4


def _quiet(*_a, **_k):
    pass


def _build(method_name, reg_name, cuda_graph, probe, seed=0, log=_quiet, **reg_options):
    torch.manual_seed(seed)
    extra = {"proj_hidden": 32, "proj_out": 16}
    cfg_cls = METHODS[method_name][1]
    if "pred_hidden" in cfg_cls.__dataclass_fields__:
        extra["pred_hidden"] = 16
    if method_name == "mocov2plus":
        extra["queue_size"] = 20  # B * STEPS > 20: the ring buffer wraps
    method = build_method(cfg_cls(name=method_name, **extra), ModelConfig(), num_classes=10)
    reg_cfg_cls = REGULARIZERS[reg_name][1]
    reg_kw = {"distill_hidden": 16} if "distill_hidden" in reg_cfg_cls.__dataclass_fields__ else {}
    reg = build_regularizer(reg_cfg_cls(name=reg_name, **reg_kw, **reg_options), method)
    method.to(memory_format=torch.channels_last)
    reg.to(memory_format=torch.channels_last)
    reg.begin_task(method, 0)
    with torch.no_grad():  # a "previous task" that differs from the current model
        for p in method.parameters():
            p.add_(0.01 * torch.randn_like(p))
    reg.begin_task(method, 1)
    optim_cfg = OptimConfig(batch_size=B, epochs=3, warmup_epochs=1)
    opt = build_optimizer(method.param_groups(optim_cfg) + reg.param_groups(optim_cfg), optim_cfg)
    train_cfg = TrainConfig(device="cpu", precision="fp32", online_probe=probe, cuda_graph=cuda_graph, progress=False)
    return Trainer(method, reg, opt, train_cfg, torch.device("cpu"), log=log), optim_cfg


def _batches(n, probe, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        views = [torch.randn(B, 3, SIZE, SIZE, generator=g).contiguous(memory_format=torch.channels_last) for _ in range(2)]
        labels = torch.randint(0, 10, (B,), generator=g)
        if probe == "full":
            pb = (torch.randn(B, 3, SIZE, SIZE, generator=g).contiguous(memory_format=torch.channels_last),
                  torch.randint(0, 10, (B,), generator=g))
        elif probe == "task":
            pb = (None, labels)
        else:
            pb = None
        out.append((views, labels, pb))
    return out


def _trajectory(trainer, optim_cfg, batches, rehearse=False, before_step=None):
    losses = []
    if rehearse:  # the capture path's warm-up: steps that must leave no trace
        trainer.graph.refill(*batches[0])
        trainer.graph.warmup()
    for i, (views, labels, pb) in enumerate(batches):
        set_lr(trainer.optimizer, i / 2, 3, optim_cfg)  # an lr that changes between steps (step schedule)
        if before_step is not None:
            before_step(trainer, i)
        logs = trainer.run_step(views, labels, pb, i, len(batches))
        losses.append({k: v.detach().clone() for k, v in logs.items()})
    return losses


@pytest.mark.parametrize("method_name, reg_name, probe", [("simclr", "pnr", "task"), ("mocov2plus", "pnr", "full"),
                                                          ("byol", "cassle", "off"), ("barlow", "pfr", "off"),
                                                          ("barlow", "pocon", "off"), ("simclr", "cla_e", "off"),
                                                          ("byol", "cla_e", "task")])
@pytest.mark.parametrize("rehearse", [False, True])
def test_graph_step_matches_eager_trajectory(method_name, reg_name, probe, rehearse):
    eager, optim_cfg = _build(method_name, reg_name, cuda_graph=False, probe=probe)
    graph, _ = _build(method_name, reg_name, cuda_graph=True, probe=probe)
    assert eager.graph is None and isinstance(graph.graph, GraphStep)
    batches = _batches(STEPS, probe)
    ref = _trajectory(eager, optim_cfg, batches)
    got = _trajectory(graph, optim_cfg, batches, rehearse=rehearse)
    for r, g in zip(ref, got):
        assert r.keys() == g.keys()
        for k in r:
            torch.testing.assert_close(g[k], r[k], **TOL, msg=lambda m, k=k: f"{k}: {m}")
    # the same model, EMA networks, queues and optimizer state at the end
    for (n, a), b in zip(eager.method.state_dict().items(), graph.method.state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), **TOL, msg=lambda m, n=n: f"{n}: {m}")
    lrs = [g["lr"] for g in graph.optimizer.param_groups]
    assert all(isinstance(lr, torch.Tensor) and lr.ndim == 0 for lr in lrs)
    for ge, gg in zip(eager.optimizer.param_groups, graph.optimizer.param_groups):
        assert float(gg["lr"]) == pytest.approx(ge["lr"], rel=1e-6)


REPLAYED = 3  # CLA-R: the last rows of each batch are replayed images


def _cla_r_replay(trainer, i):
    """What the ReplayLoader does before a CLA-R step: draw REPLAYED slots, their stored projections into ``picked``
    (in place from the second draw on: a captured graph reads that tensor). The buffer is filled once, at step 0,
    with 2 * REPLAYED images whose stored projections differ, so every step aligns to other targets."""
    buffer = trainer.regularizer.replay_buffer
    gen = torch.Generator(device=buffer.features.device).manual_seed(100 + i)
    if i == 0:
        buffer.pending = torch.randn(2 * REPLAYED, buffer.features.shape[1], generator=gen,
                                     device=buffer.features.device)
        buffer.add(torch.arange(2 * REPLAYED, device=buffer.features.device), gen)
    buffer.sample(REPLAYED, gen)


@pytest.mark.parametrize("options", [{}, {"stored_projection": "mean", "stored_refresh": 0.5,
                                                 "align_criterion": "cosine"}])
def test_cla_r_graph_step_matches_eager_with_a_replaying_buffer(options):
    """CLA-R's alignment is active (the buffer replays) and its targets change every step; the graph path follows the
    eager one bit for bit, the projections waiting to enter the buffer (and to refresh their slots) included."""
    eager, optim_cfg = _build("simclr", "cla_r", cuda_graph=False, probe="off", **options)
    graph, _ = _build("simclr", "cla_r", cuda_graph=True, probe="off", **options)
    batches = _batches(STEPS, "off")
    ref = _trajectory(eager, optim_cfg, batches, before_step=_cla_r_replay)
    got = _trajectory(graph, optim_cfg, batches, before_step=_cla_r_replay)
    assert eager.regularizer.active and all(float(r["cla"]) != 0 for r in ref)  # cosine: negative
    assert len({round(float(r["cla"]), 6) for r in ref}) == STEPS  # other targets at every step
    for r, g in zip(ref, got):
        for k in r:
            torch.testing.assert_close(g[k], r[k], **TOL, msg=lambda m, k=k: f"{k}: {m}")
    for name in ("pending", "replayed_now"):
        torch.testing.assert_close(getattr(graph.regularizer.replay_buffer, name),
                                   getattr(eager.regularizer.replay_buffer, name), **TOL)
    assert graph.regularizer.replay_buffer.pending.shape[0] == B - REPLAYED
    assert graph.regularizer.replay_buffer.replayed_now.shape[0] == (REPLAYED if options else 0)


def test_static_buffers_are_refilled_in_place_and_reallocated_on_new_shapes():
    trainer, _ = _build("simclr", "pnr", cuda_graph=True, probe="full")
    gs = trainer.graph
    b1, b2 = _batches(2, "full", seed=3)
    gs.refill(*b1)
    views, labels, (px, py) = gs.static
    ptrs = [t.data_ptr() for t in (*views, labels, px, py)]
    gs.refill(*b2)
    views2, labels2, (px2, py2) = gs.static
    assert [t.data_ptr() for t in (*views2, labels2, px2, py2)] == ptrs  # same buffers, new contents
    assert torch.equal(views2[1], b2[0][1]) and torch.equal(labels2, b2[1]) and torch.equal(px2, b2[2][0])
    assert views2[0].is_contiguous(memory_format=torch.channels_last)
    half = slice(0, B // 2)
    gs.refill([v[half] for v in b1[0]], b1[1][half], (b1[2][0][half], b1[2][1][half]))
    assert gs.static[0][0].shape[0] == B // 2  # a new layout re-allocates (and would re-capture)
    gs.recapture()
    assert gs.static is None and not gs.captured


def test_cuda_graph_auto_is_eager_and_silent_on_cpu_and_takes_the_old_booleans():
    lines = []
    trainer, _ = _build("simclr", "finetune", cuda_graph="auto", probe="off", log=lines.append)
    assert trainer.graph is None and lines == []  # the default: no "running the step eagerly" on every CPU run
    assert TrainConfig().cuda_graph == "auto"
    for given, mode in ((True, "true"), ("on", "true"), (False, "false"), ("False", "false"), ("AUTO", "auto")):
        assert TrainConfig(cuda_graph=given).cuda_graph == mode  # a config.json written with true / false
    with pytest.raises(ConfigError, match=r"train.cuda_graph='sometimes' is invalid; allowed: auto, true, false"):
        TrainConfig(cuda_graph="sometimes")


def test_fallback_reasons_are_printed_once_per_graph_step():
    assert capture_blocker(torch.device("cpu"), "fp16") == FP16_REASON  # fp16 is named first, on any device
    assert "CUDA device" in capture_blocker(torch.device("cpu"), "bf16")
    assert capture_blocker(torch.device("cuda"), "bf16") is None
    lines = []
    trainer, _ = _build("simclr", "finetune", cuda_graph=True, probe="off", log=lines.append)
    assert len(lines) == 1 and "cuda_graph: running the step eagerly" in lines[0] and "CUDA device" in lines[0]
    # fp16 on CPU: the trainer refuses fp16 there, so build the wrapper on a trainer whose config says fp16
    trainer.cfg = dataclasses.replace(trainer.cfg, precision="fp16")
    lines.clear()
    GraphStep(trainer, log=lines.append)
    assert len(lines) == 1 and "fp16" in lines[0] and "GradScaler" in lines[0]


def test_graph_off_runs_plain_eager_step():
    trainer, _ = _build("simclr", "finetune", cuda_graph=False, probe="off")
    assert trainer.graph is None
    (views, labels, pb), = _batches(1, "off")
    logs = trainer.run_step(views, labels, pb, 0, 1)
    assert torch.isfinite(logs["loss"])
    assert all(not isinstance(g["lr"], torch.Tensor) for g in trainer.optimizer.param_groups)
    copy.deepcopy(trainer.optimizer.state_dict())  # float lrs: a plain checkpoint


@pytest.mark.parametrize("name", ["byol", "mocov2plus"])
def test_ema_with_tensor_tau_equals_formula_and_float_path(name):
    trainer, _ = _build(name, "finetune", cuda_graph=False, probe="off")
    m = trainer.method
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    online = [p.detach().clone() for p in m.backbone.parameters()]
    ema = [p.detach().clone() for p in m.momentum_backbone.parameters()]
    step, total = 3, 10
    tau = m.step_tau(step, total)  # the anchors' tau(step - 1)
    assert tau == pytest.approx(m.cfg.final_tau - (m.cfg.final_tau - m.cfg.base_tau) * (math.cos(math.pi * 0.2) + 1) / 2)
    twin = copy.deepcopy(m)
    tau_t = torch.full((), tau, dtype=torch.float32)
    m.after_step(step, total, tau=tau_t)
    twin.after_step(step, total)
    for e0, o, e1, e2 in zip(ema, online, m.momentum_backbone.parameters(), twin.momentum_backbone.parameters()):
        torch.testing.assert_close(e1, tau * e0 + (1 - tau) * o, rtol=1e-6, atol=1e-6)
        assert torch.equal(e1, e2)


def anchor_step_tau(k, total, base, final):
    """Restatement of csm9493/PNR's momentum update in Lightning 1.5's on_train_batch_end: after optimizer step k
    (0-based, counted across epochs) global_step == k; the update runs only if k > last_step (not at k = 0) and uses
    cur_tau, which update_tau(k - 1, K) set one call earlier (cur_tau = base_tau before that)."""
    if k == 0:
        return None
    return final - (final - base) * (math.cos(math.pi * (k - 1) / total) + 1) / 2


def _recorded_taus(trainer):
    """Wrap ``method.after_step`` to recover each update's tau from the weights: xi' - xi = (1 - tau)(theta - xi)."""
    m, taus = trainer.method, []
    original = m.after_step

    def after_step(step, total_steps, tau=None):
        ema = [p.detach().clone() for _, e in m.momentum_pairs() for p in e.parameters()]
        online = [p.detach().clone() for o, _ in m.momentum_pairs() for p in o.parameters()]
        original(step, total_steps, tau=tau)
        new = [p.detach() for _, e in m.momentum_pairs() for p in e.parameters()]
        if all(torch.equal(a, b) for a, b in zip(ema, new)):
            taus.append(None)  # no update
            return
        num = sum(((b - a).double() * (o - a).double()).sum() for a, b, o in zip(ema, new, online))
        den = sum(((o - a).double() ** 2).sum() for a, o in zip(ema, online))
        taus.append(1 - float(num / den))

    m.after_step = after_step
    return taus


@pytest.mark.parametrize("name, cuda_graph", [("byol", False), ("mocov2plus", True)])
def test_ema_tau_per_step_follows_the_anchors_across_epochs(name, cuda_graph):
    """Two epochs of three steps: no update after step 0, then tau(k - 1), the step index running on across the
    epoch boundary; the same on the eager path and through GraphStep's tensor tau."""
    trainer, _ = _build(name, "finetune", cuda_graph=cuda_graph, probe="off")
    cfg = dataclasses.replace(trainer.method.cfg, base_tau=0.9, final_tau=1.0)  # wide range: each step's tau differs
    trainer.method.cfg = cfg
    taus = _recorded_taus(trainer)
    loader = [(views, labels, None) for views, labels, _ in _batches(3, "off")]
    epochs, steps = 2, 3
    for epoch in range(epochs):
        trainer.train_epoch(loader, None, epoch, epoch * steps, epochs * steps, steps)
    expected = [anchor_step_tau(k, epochs * steps, cfg.base_tau, cfg.final_tau) for k in range(epochs * steps)]
    assert taus[0] is None and expected[0] is None
    assert taus[1:] == pytest.approx(expected[1:], abs=1e-3)
    assert trainer.method.step_tau(0, 6) == 1.0 and trainer.method.step_tau(3, 6) == pytest.approx(expected[3])


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("two_streams", [False, True])
@pytest.mark.parametrize("method_name, reg_name, probe", [("mocov2plus", "pnr", "full"), ("simclr", "cla_e", "off"),
                                                          ("simclr", "cla_r", "off")])
def test_captured_graph_matches_eager_on_cuda(two_streams, method_name, reg_name, probe):
    """On CUDA the step is really captured and replayed; its trajectory follows the eager one (kernels may differ).
    CLA-E: the EMA update inside the graph; CLA-R: the replayed rows' stored projections refilled in place."""
    def build(cuda_graph):
        trainer, optim_cfg = _build(method_name, reg_name, cuda_graph=cuda_graph, probe=probe)
        dev = torch.device("cuda")
        trainer.method.to(dev)
        trainer.regularizer.to(dev)
        cfg = dataclasses.replace(trainer.cfg, device="cuda", frozen_stream=two_streams)
        opt = trainer.optimizer
        return Trainer(trainer.method, trainer.regularizer, opt, cfg, dev, log=_quiet), optim_cfg

    torch.backends.cudnn.deterministic = True
    eager, optim_cfg = build(False)
    graph, _ = build(True)
    batches = [([v.cuda() for v in views], labels.cuda(), None if pb is None else tuple(t.cuda() for t in pb))
               for views, labels, pb in _batches(STEPS, probe)]
    replay = _cla_r_replay if reg_name == "cla_r" else None
    ref = _trajectory(eager, optim_cfg, batches, before_step=replay)
    got = _trajectory(graph, optim_cfg, batches, before_step=replay)
    assert graph.graph.captured, graph.graph.reason
    for r, g in zip(ref, got):
        torch.testing.assert_close(g["loss"], r["loss"], rtol=1e-3, atol=1e-3)


def _graph_vs_eager_through_a_process_group(device: torch.device):
    """SimCLR-PNR's step through a 1-rank ``ProcessGroup`` (NCCL on CUDA, gloo on CPU), captured vs eager: the
    step then holds the collectives of a torchrun run (the differentiable all-gather of the negatives, the gradient
    all-reduce). Returns (trainer that ran the graph path, eager losses, graph-path losses)."""
    import os
    import socket

    from fastpnr.system import distributed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    group = distributed.ProcessGroup(0, 1, 0, device, timeout_s=120)
    try:
        def build(cuda_graph):
            trainer, optim_cfg = _build("simclr", "pnr", cuda_graph=cuda_graph, probe="task")
            for module in (trainer.method, trainer.regularizer):
                distributed.convert_batchnorm(module).to(device)
                module.dist = group
            cfg = dataclasses.replace(trainer.cfg, device=device.type)
            return Trainer(trainer.method, trainer.regularizer, trainer.optimizer, cfg, device, log=_quiet,
                           dist=group), optim_cfg

        eager, optim_cfg = build(False)
        graph, _ = build(True)
        batches = [([v.to(device) for v in views], labels.to(device), (None, labels.to(device)))
                   for views, labels, _ in _batches(STEPS, "task")]
        return graph, _trajectory(eager, optim_cfg, batches), _trajectory(graph, optim_cfg, batches)
    finally:
        group.close()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_step_through_a_process_group_runs_the_graph_path_on_cpu():
    """The plumbing of the CUDA check below, on gloo: eager fallback from the static buffers, same losses."""
    graph, ref, got = _graph_vs_eager_through_a_process_group(torch.device("cpu"))
    assert not graph.graph.captured and "CUDA device" in graph.graph.reason
    for r, g in zip(ref, got):
        torch.testing.assert_close(g["loss"], r["loss"], **TOL)


@needs_cuda
def test_captured_graph_with_nccl_collectives_matches_eager_on_cuda():
    """Under torchrun on GPUs the captured step holds NCCL collectives; on one GPU a 1-rank NCCL group checks that
    they capture and replay (the values are one process's: the test compares with eager)."""
    torch.backends.cudnn.deterministic = True
    graph, ref, got = _graph_vs_eager_through_a_process_group(torch.device("cuda", 0))
    assert graph.graph.captured, graph.graph.reason
    for r, g in zip(ref, got):
        torch.testing.assert_close(g["loss"], r["loss"], rtol=1e-3, atol=1e-3)
