"""Replay (ER, LUMP): the mixing function, the replay loader's batches against a restatement, rank equality, the
buffer's stream, resume at an epoch boundary, and the one-line errors."""
import numpy as np
import pytest
import torch

from fastpnr.config import build_config
from fastpnr.system.distributed import Dist
from fastpnr.errors import ConfigError, FastPNRError
from fastpnr.regularizers.replay_loader import MIX, REPLAY_AUGMENT, REPLAY_PICK, RESERVOIR, ReplayLoader, check_buffer_fills, mix_views
from fastpnr.regularizers.reservoir import ReservoirBuffer
from loaders import ViewConfig
from loaders.gpu_aug import augment_batch
from loaders.gpu_resident import GpuResidentLoader
from loaders.seeding import epoch_generator, epoch_seed
from tests.loaders.utils import random_dataset

B, R, SEED = 8, 8, 11
VIEWS = [ViewConfig(size=12, crop_scale=(0.3, 1.0)), ViewConfig(size=12, crop_scale=(0.3, 1.0), solarize_prob=0.2)]


def gpu_loader(shard=None, subset=None):
    return GpuResidentLoader(random_dataset(n=120, size=16), batch_size=B, num_views=2, device="cpu", seed=SEED,
                             view_configs=VIEWS, subset=np.arange(40) if subset is None else subset, shard=shard)


def replay_loader(mode, buffer=None, dist=None, shard=None, alpha=0.4, size=16):
    buffer = buffer if buffer is not None else ReservoirBuffer(size)
    return ReplayLoader(gpu_loader(shard), buffer, mode, R, SEED, dist or Dist(), alpha)


def test_mix_views_is_lam_current_plus_one_minus_lam_buffer_in_float64():
    g = torch.Generator().manual_seed(0)
    cur, buf = (torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(2))
    ref = torch.stack([torch.stack([0.3 * cur[i, c] + 0.7 * buf[i, c] for c in range(3)]) for i in range(4)])
    torch.testing.assert_close(mix_views(cur, buf, 0.3), ref, rtol=1e-15, atol=1e-15)
    with pytest.raises(FastPNRError) as exc:
        mix_views(cur, buf[:3], 0.3)
    assert "\n" not in str(exc.value)


def restated_epoch(mode, epoch, buffer_slots, buffer_seen, steps=None):
    """The replay loader's epoch restated step by step from the same seeded streams: (views, labels) per batch and
    the buffer after the epoch."""
    inner = gpu_loader()
    inner.set_epoch(epoch)
    buf = ReservoirBuffer(len(buffer_slots))
    buf.slots.copy_(buffer_slots), buf.seen.fill_(buffer_seen)
    buf._seen_host = buffer_seen
    res, pick, aug = (epoch_generator(SEED, epoch, s, "cpu") for s in (RESERVOIR, REPLAY_PICK, REPLAY_AUGMENT))
    mix = np.random.default_rng(epoch_seed(SEED, epoch, MIX))
    out = []
    for k, (views, labels, idx) in enumerate(inner):
        if steps is not None and k == steps:
            break
        if buf.filled() >= R:
            rows = buf.sample(R, pick)
            x = inner.images[rows].float() / 255
            rv = [augment_batch(x, cfg, aug) for cfg in VIEWS]
            if mode == "er":
                views, labels = [torch.cat([v, r]) for v, r in zip(views, rv)], torch.cat([labels, inner.labels[rows]])
            else:
                lam = mix.beta(0.4, 0.4)
                views = [lam * v + (1 - lam) * r for v, r in zip(views, rv)]
        out.append((views, labels))
        buf.add(idx, res)
    return out, buf


@pytest.mark.parametrize("mode", ["er", "lump"])
def test_batches_and_buffer_equal_the_restatement_over_two_epochs(mode):
    ld = replay_loader(mode)
    slots, seen = ld.buffer.slots.clone(), 0
    for epoch in range(2):
        ref, ref_buf = restated_epoch(mode, epoch, slots, seen)
        ld.set_epoch(epoch)
        got = [(v, l) for v, l, _ in ld]
        assert len(got) == len(ref) == 5
        for k, ((gv, gl), (rv, rl)) in enumerate(zip(got, ref)):
            rows = B if (epoch == 0 and k == 0) else B + (R if mode == "er" else 0)  # R = B buffered after step 0
            assert gl.shape[0] == rows and torch.equal(gl, rl)
            for a, b in zip(gv, rv):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert torch.equal(ld.buffer.slots, ref_buf.slots) and ld.buffer.seen_host == ref_buf.seen_host
        slots, seen = ld.buffer.slots.clone(), ld.buffer.seen_host
    assert seen == 2 * 40 and int(ld.buffer.seen) == 80


@pytest.mark.parametrize("mode", ["er", "lump"])
def test_empty_buffer_passes_the_first_batch_unchanged(mode):
    """Step 0 of the run: nothing is buffered, plain SSL on the current views (UCL mixup.py L18-29); the restatement
    above pins the later batches (LUMP: one lam per batch, shared by both views, mixup.py L46-48)."""
    ld, plain = replay_loader(mode), gpu_loader()
    ld.set_epoch(0), plain.set_epoch(0)
    got = [v for _, (v, _, _) in zip(range(2), ld)]
    ref = [v for _, (v, _, _) in zip(range(2), plain)]
    assert all(torch.equal(a, b) for a, b in zip(got[0], ref[0]))
    assert got[1][0].shape[0] == (2 * B if mode == "er" else B)
    assert not torch.equal(got[1][0][:B], ref[1][0]) if mode == "lump" else torch.equal(got[1][0][:B], ref[1][0])


def test_a_batch_fetched_but_not_trained_never_enters_the_buffer():
    ld = replay_loader("er")
    ld.set_epoch(0)
    for k, (_, _, idx) in enumerate(ld):
        if k == 2:  # the epoch loop's `if i >= steps: break` with train.steps_per_epoch 2
            break
    assert ld.buffer.seen_host == 2 * B


def test_batch_passes_draw_a_replay_batch_per_pass_and_buffer_each_batch_once():
    """data.batch_passes 2 (the CLA authors' after_mb_passes): every pass of a batch has its own buffer draw, and the
    batch enters the reservoir once, after its last pass: as many images enter as with the one-pass loader."""
    inner = GpuResidentLoader(random_dataset(n=120, size=16), batch_size=B, num_views=2, device="cpu", seed=SEED,
                              view_configs=VIEWS, subset=np.arange(40), batch_passes=2)
    twice = ReplayLoader(inner, ReservoirBuffer(16), "er", R, SEED, Dist(), 0.4, per_step=True)
    once = ReplayLoader(gpu_loader(), ReservoirBuffer(16), "er", R, SEED, Dist(), 0.4, per_step=True)
    twice.set_epoch(0), once.set_epoch(0)
    seen = []
    for step, (views, labels, idx) in enumerate(twice):
        seen.append(twice.buffer.seen_host)
        assert views[0].shape[0] == (B if step < 2 else B + R)  # replay once the first batch entered (8 = R)
        if step % 2 == 1:  # the second pass: the same current images, other views, another replay draw
            assert torch.equal(idx, prev[0]) and not torch.equal(views[0][:B], prev[1][:B])
            assert step < 2 or not torch.equal(views[0][B:], prev[1][B:])
        prev = (idx, views[0])
    assert seen == [0, 0, 8, 8, 16, 16, 24, 24, 32, 32] and twice.buffer.seen_host == 40
    for _ in once:
        pass
    assert once.buffer.seen_host == 40
    # which 16 are kept differs from the one-pass loader's (the reservoir's draws are seeded by step): 16 distinct ones
    assert set(twice.buffer.slots.tolist()) <= set(range(40)) and len(set(twice.buffer.slots.tolist())) == 16


@pytest.mark.parametrize("mode", ["er", "lump"])
def test_resume_at_an_epoch_boundary_continues_identically(mode):
    full = replay_loader(mode)
    for epoch in range(2):
        full.set_epoch(epoch)
        last = [v for v, _, _ in full]
    part = replay_loader(mode)
    part.set_epoch(0)
    list(part)
    state = {k: v.clone() for k, v in part.buffer.state_dict().items()}  # the checkpoint after epoch 0
    resumed = replay_loader(mode)
    resumed.buffer.load_state_dict(state)
    resumed.set_epoch(1)
    again = [v for v, _, _ in resumed]
    assert all(torch.equal(a, b) for x, y in zip(last, again) for a, b in zip(x, y))
    assert torch.equal(full.buffer.slots, resumed.buffer.slots)


class TwoRanks(Dist):
    """Rank ``rank`` of 2; ``gather`` returns the global batch a one-process loader yields at that step."""

    world_size = 2

    def __init__(self, rank, global_batches):
        self.rank, self.batches = rank, iter(global_batches)

    def gather(self, x):
        return next(self.batches)


@pytest.mark.parametrize("mode", ["er", "lump"])
def test_two_ranks_hold_the_same_buffer_and_their_rows_of_one_process_batches(mode):
    one = replay_loader(mode)
    one.set_epoch(0)
    single = [(v, l, i) for v, l, i in one]
    gpu = gpu_loader()
    gpu.set_epoch(0)
    global_idx = [i for _, _, i in gpu]
    ranks = []
    for rank in range(2):
        half = slice(rank * B // 2, (rank + 1) * B // 2)
        ld = replay_loader(mode, dist=TwoRanks(rank, global_idx), shard=half)
        ld.set_epoch(0)
        ranks.append([(v, l) for v, l, _ in ld])
        assert torch.equal(ld.buffer.slots, one.buffer.slots)
    for k, (views, labels, _) in enumerate(single):
        for r in range(2):
            cur, rep = slice(r * B // 2, (r + 1) * B // 2), slice(B + r * R // 2, B + (r + 1) * R // 2)
            if mode == "er" and views[0].shape[0] > B:  # rank r: [its current rows; its replayed rows]
                want = [torch.cat([v[cur], v[rep]]) for v in views]
                want_labels = torch.cat([labels[cur], labels[rep]])
            else:
                want, want_labels = [v[cur] for v in views], labels[cur]
            got_views, got_labels = ranks[r][k]
            assert torch.equal(got_labels, want_labels)
            for a, b in zip(got_views, want):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # the crop's grid_sample on fewer rows


def test_bad_replay_settings_are_one_line():
    cases = [({"regularizer": "er", "regularizer.replay_batch": 0}, "regularizer.replay_batch=0"),
             ({"regularizer": "lump", "regularizer.replay_batch": 8}, "with LUMP"),
             ({"regularizer": "er", "regularizer.replay_batch": 300}, "<= regularizer.buffer_size"),
             ({"regularizer": "er", "data.loader": "torchvision"}, "data.loader='torchvision'"),
             ({"regularizer": "er", "regularizer.buffer_size": 0}, "regularizer.buffer_size=0"),
             ({"regularizer": "er", "regularizer.replay": "lump"}, "regularizer.replay='lump'"),
             ({"regularizer": "pnr", "regularizer.replay": "mix"}, "regularizer.replay='mix'"),
             ({"regularizer": "er", "method": "mocov2plus", "method.queue_size": 256, "optim.batch_size": 256},
              "method.queue_size=256")]
    for ov, text in cases:
        with pytest.raises(ConfigError) as exc:
            build_config("smoke", ov)
        assert "\n" not in str(exc.value) and text in str(exc.value), (ov, str(exc.value))
    with pytest.raises(ConfigError) as exc:
        check_buffer_fills(300, 2 * 16 * 5, "2 steps x batch 16 x 5 epochs")
    assert "\n" not in str(exc.value) and "regularizer.buffer_size=300" in str(exc.value) and "<= 160" in str(exc.value)


def test_every_strategy_takes_replay_and_checkpoints_its_buffer():
    from fastpnr.methods import build_method
    from fastpnr.regularizers import build_regularizer

    for reg in ("finetune", "er", "cassle", "pnr", "pfr"):
        ov = {"regularizer": reg, "method.proj_hidden": 8, "method.proj_out": 4, "model.width": 2}
        if reg not in ("er",):
            ov["regularizer.replay"] = "er"
        cfg = build_config("smoke", ov)
        r = build_regularizer(cfg.regularizer, build_method(cfg.method, cfg.model, num_classes=10))
        assert isinstance(r.replay_buffer, ReservoirBuffer)
        assert {"replay_buffer.slots", "replay_buffer.seen"} <= set(r.state_dict())
    cfg = build_config("smoke", {"regularizer": "cassle", "method.proj_hidden": 8, "method.proj_out": 4, "model.width": 2})
    assert build_regularizer(cfg.regularizer, build_method(cfg.method, cfg.model, num_classes=10)).replay_buffer is None


def _red_replay_loader(plain: bool):
    """A LUMP replay loader whose images are all pure red, the buffer full: crop, flip and resize keep a constant
    image constant; colour jitter and grayscale change it."""
    ld = ReplayLoader(gpu_loader(), ReservoirBuffer(16), "lump", R, SEED, Dist(), 0.4, plain_first_view=plain)
    ld.loader.images[:] = 0
    ld.loader.images[:, 0] = 255
    ld.buffer.add(torch.arange(16), torch.Generator().manual_seed(0))
    return ld


def test_lump_plain_first_view_is_the_authors_transform_without_colour_changes():
    """UCL re-augments a replayed image's first view with the dataset's transform (models/mixup.py L44-45,
    datasets/seq_cifar10.py L57-64): crop, flip, normalize only. The second view keeps the run's recipe."""
    red = torch.tensor([(1.0 - m) / s if c == 0 else (0.0 - m) / s
                        for c, (m, s) in enumerate(zip(VIEWS[0].mean, VIEWS[0].std))]).view(1, 3, 1, 1)
    gens = lambda: [torch.Generator().manual_seed(k) for k in (1, 2)]  # noqa: E731
    plain = _red_replay_loader(True)
    views, _ = plain.replayed_views(*gens())
    torch.testing.assert_close(views[0], red.expand_as(views[0]), rtol=0, atol=1e-4)
    assert plain.replay_recipes[1] == VIEWS[1] and plain.replay_recipes[0].crop_scale == (0.08, 1.0)
    assert plain.replay_recipes[0].size == VIEWS[0].size and plain.replay_recipes[0].mean == VIEWS[0].mean
    # fastpnr's default: the first view's recipe (jitter p 0.8, grayscale p 0.2) changes the colour of some rows
    recipe, _ = _red_replay_loader(False).replayed_views(*gens())
    assert (recipe[0] - red).abs().amax() > 0.1


def test_lump_first_view_option_is_checked():
    assert build_config("smoke", {"regularizer": "lump"}).regularizer.lump_first_view == "recipe"
    assert build_config("smoke", {"regularizer": "lump", "regularizer.lump_first_view": "plain"}
                        ).regularizer.lump_first_view == "plain"
    for ov, text in (({"regularizer": "lump", "regularizer.lump_first_view": "raw"}, "allowed: recipe, plain"),
                     ({"regularizer": "er", "regularizer.lump_first_view": "plain"}, "plain is LUMP's")):
        with pytest.raises(ConfigError) as exc:
            build_config("smoke", ov)
        assert "\n" not in str(exc.value) and "regularizer.lump_first_view=" in str(exc.value) and text in str(exc.value)
