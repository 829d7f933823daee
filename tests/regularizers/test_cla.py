"""CLA-E and CLA-R (fastpnr.regularizers.cla): the EMA, the buffer of stored projections, the penalty's wiring."""
import numpy as np
import pytest
import torch

from fastpnr.config import build_config
from fastpnr.methods import build_method
from fastpnr.regularizers import build_regularizer
from fastpnr.regularizers.cla import FeatureReservoir, ema_update
from fastpnr.regularizers.reservoir import ReservoirBuffer
from tests.losses._ref import assert_close
from tests.losses.test_cla import REFS


def test_ema_update_is_m_past_plus_one_minus_m_online():
    g = torch.Generator().manual_seed(0)
    past = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    online = [torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    expected = [0.9 * p + 0.1 * o for p, o in zip(past, online)]
    ema_update(past, online, 0.9)
    for a, e in zip(past, expected):
        assert_close(a, e)


def reference_reservoir(size, stream, features, u_batches):
    """Algorithm R one item at a time: item c goes to slot c while c < size, else to floor(u (c + 1)) when < size."""
    slots, feats, c = [-1] * size, [None] * size, 0
    for batch, fb, u in zip(stream, features, u_batches):
        for item, f, uj in zip(batch, fb, u):
            r = c if c < size else int(np.floor(uj * (c + 1)))
            if r < size:
                slots[r], feats[r] = item, f
            c += 1
    return slots, feats


def test_feature_reservoir_keeps_each_slots_projection_from_when_it_entered():
    size, dim = 5, 3
    buf = FeatureReservoir(size, dim)
    gen, twin = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    stream = [torch.arange(4) + 10 * k for k in range(4)]
    feats = [torch.randn(4, dim, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    u_batches = []
    for idx, f in zip(stream, feats):
        u_batches.append(torch.rand(4, generator=twin, dtype=torch.float64).tolist())
        buf.pending = f
        buf.add(idx, gen)
    slots, ref = reference_reservoir(size, [s.tolist() for s in stream], feats, u_batches)
    assert buf.slots.tolist() == slots
    for k in range(size):
        assert torch.equal(buf.features[k], ref[k].float())
    picked = buf.sample(3, torch.Generator().manual_seed(1))
    for i, index in enumerate(picked.tolist()):  # the picked projections are those of the picked images
        assert torch.equal(buf.picked[i], buf.features[slots.index(index)])


def test_feature_reservoir_refreshes_the_replayed_slots_once_before_the_batch_enters():
    """stored <- alpha stored + (1 - alpha) now at the last replay's slots, once; other slots keep their projection."""
    size, dim, alpha = 8, 3, 0.25
    buf = FeatureReservoir(size, dim, refresh=alpha)
    gen = torch.Generator().manual_seed(0)
    buf.pending = torch.randn(4, dim, generator=gen)
    buf.add(torch.arange(4), gen)  # 4 of 8 slots: the next adds fill empty slots, overwriting nothing
    before = buf.features.clone()
    buf.sample(2, torch.Generator().manual_seed(1))
    positions = buf.positions.clone()
    assert positions.shape == (2,) and torch.equal(buf.picked, before[positions])
    now = torch.randn(2, dim, generator=gen)
    buf.replayed_now = now
    buf.pending = torch.randn(2, dim, generator=gen)
    buf.add(torch.arange(4, 6), gen)
    expected = before.clone()
    expected[positions] = alpha * before[positions] + (1 - alpha) * now
    assert torch.allclose(buf.features[:4], expected[:4], rtol=0, atol=1e-7)
    assert buf.positions.numel() == 0  # applied once: the next add, without a replay, refreshes nothing
    kept = buf.features.clone()
    buf.pending = torch.randn(1, dim, generator=gen)
    buf.add(torch.arange(6, 7), gen)
    assert torch.equal(buf.features[:6], kept[:6])
    never = FeatureReservoir(size, dim)  # refresh 1 (the default): sample records no slots, nothing moves
    never.pending = before[:4]
    never.add(torch.arange(4), gen)
    never.sample(2, torch.Generator().manual_seed(1))
    assert never.positions.numel() == 0


def test_feature_reservoir_refreshes_at_every_pass_and_adds_after_the_last():
    """data.batch_passes: between two passes of a batch the replayed slots move (the authors refresh in every pass's
    after_forward); no image enters until the batch's last pass."""
    size, dim, alpha = 8, 3, 0.5
    buf = FeatureReservoir(size, dim, refresh=alpha)
    gen = torch.Generator().manual_seed(0)
    buf.pending = torch.randn(4, dim, generator=gen)
    buf.add(torch.arange(4), gen)
    before, seen = buf.features.clone(), buf.seen_host
    buf.sample(2, torch.Generator().manual_seed(1))
    positions = buf.positions.clone()
    now = torch.randn(2, dim, generator=gen)
    buf.replayed_now = now
    buf.between_passes()
    expected = before.clone()
    expected[positions] = alpha * before[positions] + (1 - alpha) * now
    assert torch.allclose(buf.features, expected, rtol=0, atol=1e-7) and buf.seen_host == seen
    buf.between_passes()  # nothing replayed since: nothing moves twice
    assert torch.allclose(buf.features, expected, rtol=0, atol=1e-7)
    plain = ReservoirBuffer(size)  # ER's buffer: nothing to do between passes
    plain.between_passes()
    assert plain.seen_host == 0


@pytest.mark.parametrize("stored, refresh", [("first", 1.0), ("mean", 1.0), ("mean", 0.5)])
def test_cla_r_stores_the_first_view_or_the_views_mean_and_the_replayed_rows_now(stored, refresh):
    method, reg = _pair("cla_r", "simclr", buffer_size=8, replay_batch=4, stored_projection=stored,
                        stored_refresh=refresh)
    b, r = 6, 4
    g = torch.Generator().manual_seed(5)
    views = [torch.randn(b + r, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    reg.replay_buffer.picked = torch.randn(r, method.proj_dim, generator=g, dtype=torch.float64)
    out = method.forward_views(views)
    reg.end_of_step(out, {})
    z1, z2 = (z.detach().float() for z in method.distill_input(out)[:2])
    want = (z1 + z2) / 2 if stored == "mean" else z1
    assert torch.equal(reg.replay_buffer.pending, want[:b])
    if refresh < 1:
        assert torch.equal(reg.replay_buffer.replayed_now, ((z1 + z2) / 2)[b:])
    else:
        assert reg.replay_buffer.replayed_now.numel() == 0


def _pair(reg_name, method_name="simclr", **reg):
    cfg = build_config("smoke", {"method": method_name, "regularizer": reg_name, "data.scenario": "stream",
                                 "data.num_tasks": 4, "regularizer.distill_hidden": 8, "method.proj_hidden": 16,
                                 "method.proj_out": 6, "model.width": 4, "train.precision": "fp64",
                                 **({"method.pred_hidden": 8} if method_name in ("byol", "simsiam") else {}),
                                 **{f"regularizer.{k}": v for k, v in reg.items()}})
    torch.manual_seed(0)
    method = build_method(cfg.method, cfg.model, num_classes=10).double()
    return method, build_regularizer(cfg.regularizer, method).double()


@pytest.mark.parametrize("method_name", ["simclr", "byol", "barlow", "vicreg"])
def test_cla_r_penalty_is_omega_times_the_alignment_of_the_replayed_rows(method_name):
    method, reg = _pair("cla_r", method_name, buffer_size=8, replay_batch=4)
    b, r = 6, 4
    g = torch.Generator().manual_seed(5)
    views = [torch.randn(b + r, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    reg.replay_buffer.picked = torch.randn(r, method.proj_dim, generator=g, dtype=torch.float64)
    out = method.forward_views(views)
    loss, logs = reg.penalty(method, out, {})
    z = method.distill_input(out)
    u1, u2 = (reg.distill_predictor(zv[b:]) for zv in z[:2])
    f = reg.replay_buffer.picked
    expected = 0.1 * REFS[method_name](u1, u2, f, f)
    assert_close(loss, expected)
    assert_close(logs["cla"], expected.detach())


def test_cla_e_penalty_aligns_to_the_ema_model_which_follows_the_online_one():
    method, reg = _pair("cla_e", "simclr", ema_momentum=0.5)
    reg.begin_task(method, 0)
    assert reg.active
    g = torch.Generator().manual_seed(6)
    views = [torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        for p in method.backbone.parameters():  # the online model moves; the EMA goes half way (m = 0.5)
            p.add_(0.01)
    past = [p.clone() for p in reg.frozen.backbone.parameters()]
    reg.end_of_step({}, {})
    for a, p, o in zip(reg.frozen.backbone.parameters(), past, method.backbone.parameters()):
        assert_close(a, 0.5 * p + 0.5 * o)
    out = method.forward_views(views)
    frozen_out = reg.frozen_forward(views)
    loss, _ = reg.penalty(method, out, frozen_out)
    u1, u2 = (reg.distill_predictor(z) for z in out["z"][:2])
    assert_close(loss, 0.1 * REFS["simclr"](u1, u2, *frozen_out["z"]))


def test_cla_defaults_are_the_authors_omega_and_ema_momentum():
    """omega 0.1 for both variants and m 0.999 (docs/FIDELITY.md: the authors' AEP / ARP constructors)."""
    e = build_config("stream", {"regularizer": "cla_e"}).regularizer
    r = build_config("stream", {"regularizer": "cla_r"}).regularizer
    assert (e.weight, e.ema_momentum, r.weight, r.replay) == (0.1, 0.999, 0.1, "er")
