"""The reservoir buffer of indices: the batched update equals the one-at-a-time algorithm R of UCL utils/buffer.py
(given the same uniforms), inclusion is uniform, draws are distinct, and the state round-trips a state_dict."""
import numpy as np
import pytest
import torch

from fastpnr.errors import FastPNRError
from fastpnr.regularizers.reservoir import ReservoirBuffer, reservoir_targets, reservoir_update, sample_without_replacement


def sequential_reservoir(slots: list, seen: int, new: list, u: list):
    """UCL's Buffer.add_data loop (L77-87) with reservoir() (L12-26): rand = randint(0, seen + 1) written as
    floor(u * (seen + 1)), the same uniform u per item as the batched version."""
    slots = list(slots)
    for item, uj in zip(new, u):
        if seen < len(slots):
            index = seen
        else:
            rand = int(np.floor(uj * (seen + 1)))
            index = rand if rand < len(slots) else -1
        seen += 1
        if index >= 0:
            slots[index] = item
    return slots, seen


@pytest.mark.parametrize("size,batch,steps", [(5, 3, 7), (4, 16, 5), (64, 16, 20), (3, 1, 30)])
def test_batched_update_equals_the_sequential_algorithm(size, batch, steps):
    g = torch.Generator().manual_seed(size * 100 + batch)
    slots, seen = torch.full((size,), -1, dtype=torch.long), torch.zeros((), dtype=torch.long)
    ref_slots, ref_seen = [-1] * size, 0
    for step in range(steps):
        new = torch.randint(0, 1000, (batch,), generator=g)
        u = torch.rand(batch, generator=g, dtype=torch.float64)
        slots, seen = reservoir_update(slots, seen, new, u)
        ref_slots, ref_seen = sequential_reservoir(ref_slots, ref_seen, new.tolist(), u.tolist())
        assert slots.tolist() == ref_slots and int(seen) == ref_seen, step


def test_later_item_of_a_batch_wins_a_shared_slot():
    # buffer full (seen 10 >= size 2); every item draws slot 0: the last one must hold it
    slots, seen = reservoir_update(torch.tensor([7, 8]), torch.tensor(10), torch.tensor([1, 2, 3]),
                                   torch.zeros(3, dtype=torch.float64))
    assert slots.tolist() == [3, 8] and int(seen) == 13


def test_targets_fill_in_order_then_replace_or_drop():
    u = torch.tensor([0.0, 0.999, 0.5, 0.1], dtype=torch.float64)
    t = reservoir_targets(torch.tensor(2), 4, 3, u)
    # c = 2 (< 3: slot 2), c = 3: floor(0.999*4) = 3 (dropped), c = 4: floor(0.5*5) = 2, c = 5: floor(0.1*6) = 0
    assert t.tolist() == [2, -1, 2, 0]


def test_every_streamed_item_is_kept_with_probability_size_over_seen():
    """After streaming 0..n-1 in batches, P(item in buffer) = size / n for every item (measured over many seeds;
    the tolerance is 5 binomial standard deviations of each item's count)."""
    size, n, batch, trials = 8, 40, 5, 3000
    counts = np.zeros(n)
    for trial in range(trials):
        buf = ReservoirBuffer(size)
        g = torch.Generator().manual_seed(trial)
        for start in range(0, n, batch):
            buf.add(torch.arange(start, start + batch), g)
        counts[buf.slots.numpy()] += 1
    p = size / n
    assert np.all(np.abs(counts - trials * p) < 5 * np.sqrt(trials * p * (1 - p)))


def test_sample_is_distinct_filled_slots_and_uniform():
    slots = torch.tensor([4, 9, 2, -1, -1])
    seen = {}
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        rows = sample_without_replacement(slots, 2, torch.rand(5, generator=g, dtype=torch.float64))
        assert len(set(rows.tolist())) == 2 and set(rows.tolist()) <= {4, 9, 2}
        key = tuple(sorted(rows.tolist()))
        seen[key] = seen.get(key, 0) + 1
    assert set(seen) == {(2, 4), (2, 9), (4, 9)} and min(seen.values()) > 600 / 3 - 5 * np.sqrt(600 * 2 / 9)


def test_buffer_state_round_trips_a_state_dict_with_its_host_counter():
    a = ReservoirBuffer(6)
    g = torch.Generator().manual_seed(1)
    for k in range(4):
        a.add(torch.arange(10 * k, 10 * k + 4), g)
    owner = torch.nn.Module()
    owner.replay_buffer = ReservoirBuffer(6)
    owner.load_state_dict({f"replay_buffer.{k}": v for k, v in a.state_dict().items()})
    b = owner.replay_buffer
    assert torch.equal(a.slots, b.slots) and b.seen_host == a.seen_host == 16 and b.filled() == 6
    # the same generator state continues identically from either copy
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a.add(torch.arange(100, 104), ga)
    b.add(torch.arange(100, 104), gb)
    assert torch.equal(a.slots, b.slots)
    assert torch.equal(a.sample(3, ga), b.sample(3, gb))


def test_sampling_more_than_the_buffer_holds_is_one_line():
    buf = ReservoirBuffer(4)
    buf.add(torch.arange(2), torch.Generator().manual_seed(0))
    with pytest.raises(FastPNRError) as exc:
        buf.sample(3, torch.Generator().manual_seed(0))
    assert "\n" not in str(exc.value) and "2 images in the buffer" in str(exc.value)
