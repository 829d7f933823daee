"""The pseudo-negative diagnostic (fastpnr/losses/pnr_diagnostic.py): hand-built embeddings whose cosines are known,
a float64 loop restatement on random inputs, and the asymmetric terms against the regularizers."""
from __future__ import annotations

import math

import pytest
import torch

from fastpnr.losses import pnr_barlow_regularizer, pnr_byol_regularizer, pnr_vicreg_regularizer
from fastpnr.losses.pnr_barlow import pnr_barlow_terms
from fastpnr.losses.pnr_byol import pnr_byol_terms
from fastpnr.losses.pnr_vicreg import pnr_vicreg_terms
from fastpnr.losses.pnr_diagnostic import pnr_moco_logits, pnr_simclr_logits, positive_logit
from tests.losses._ref import TOL, dot, mean, rand, unit_rows

E = torch.eye(4, dtype=torch.float64)  # e0..e3, orthonormal


def _values(d: dict) -> dict:
    return {k: float(v) for k, v in d.items()}


def test_simclr_pnr_hand_built_frozen_copies_equal_to_the_positives_cancel_them():
    # views identical, frozen model identical to the current one: every positive and its frozen copy at cosine 1,
    # the other pseudo-negatives orthogonal; the inputs' scale does not matter (normalized inside)
    z1, z2 = torch.stack([3 * E[0], E[1]]), torch.stack([E[0], 0.5 * E[1]])
    got = _values(pnr_simclr_logits(z1, z2, z1.clone(), z2.clone()))
    assert got == pytest.approx({"diag_positive": 1.0, "diag_frozen_positive": 1.0, "diag_pseudo_negatives": 0.0,
                                 "diag_gap": 0.0}, abs=1e-12)


def test_simclr_pnr_hand_built_values_by_hand():
    # rows Z = [e0, e1, e0, c] with c = (e0 + e1)/sqrt2 (row 1's positive is c); F = [e2, e0, -e0, e1]
    c = (E[0] + E[1]) / math.sqrt(2)
    z1, z2 = torch.stack([E[0], E[1]]), torch.stack([E[0], c])
    f1, f2 = torch.stack([E[2], E[0]]), torch.stack([-E[0], E[1]])
    got = _values(pnr_simclr_logits(z1, z2, f1, f2))
    s = 1 / math.sqrt(2)
    # positives Z_i.Z_i+: e0.e0, e1.c, e0.e0, c.e1 -> 1, s, 1, s
    positive = (2 + 2 * s) / 4
    # frozen copies Z_i.F_i+ (F_i+ = F[(i+2) % 4]): e0.-e0, e1.e1, e0.e2, c.e0 -> -1, 1, 0, s
    frozen = (-1 + 1 + 0 + s) / 4
    # others Z_i.F_k, k not in {i, i+}: row 0 (e0): F1 = e0, F3 = e1 -> 1, 0; row 1 (e1): F0 = e2, F2 = -e0 -> 0, 0;
    # row 2 (e0): F1, F3 -> 1, 0; row 3 (c): F0, F2 -> 0, -s
    others = (1 + 0 + 0 + 0 + 1 + 0 + 0 - s) / 8
    assert got == pytest.approx({"diag_positive": positive, "diag_frozen_positive": frozen,
                                 "diag_pseudo_negatives": others, "diag_gap": positive - frozen}, abs=1e-12)


def ref_simclr_logits(z1, z2, f1, f2):
    b = z1.shape[0]
    z, f = unit_rows(torch.cat([z1, z2])), unit_rows(torch.cat([f1, f2]))
    pos, frozen, others = [], [], []
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        pos.append(dot(z[i], z[partner]))
        frozen.append(dot(z[i], f[partner]))
        others += [dot(z[i], f[k]) for k in range(2 * b) if k not in (i, partner)]
    return mean(pos), mean(frozen), mean(others)


def ref_moco_logits(q, k, f, frozen_queue):
    # view v: anchor q[v], positive k[1-v], frozen copy f[1-v], pseudo-negatives frozen_queue[1-v]; views averaged
    pos, frozen, others = [], [], []
    for v in (0, 1):
        a, w = unit_rows(q[v]), 1 - v
        kk, ff, queue = unit_rows(k[w]), unit_rows(f[w]), unit_rows(frozen_queue[w])
        pos.append(mean(dot(a[i], kk[i]) for i in range(len(a))))
        frozen.append(mean(dot(a[i], ff[i]) for i in range(len(a))))
        others.append(mean(dot(a[i], n) for i in range(len(a)) for n in queue))
    return mean(pos), mean(frozen), mean(others)


@pytest.mark.parametrize("b", [2, 5])
def test_simclr_pnr_matches_a_loop_restatement(b):
    z1, z2, f1, f2 = (rand(b, 6, seed=s, scale=1 + s).detach() for s in range(4))
    got = pnr_simclr_logits(z1, z2, f1, f2)
    pos, frozen, others = ref_simclr_logits(z1, z2, f1, f2)
    for key, ref in (("diag_positive", pos), ("diag_frozen_positive", frozen), ("diag_pseudo_negatives", others),
                     ("diag_gap", pos - frozen)):
        torch.testing.assert_close(got[key], ref, **TOL)


def _unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def test_moco_pnr_matches_a_loop_restatement_and_a_hand_built_case():
    b, k = 4, 8
    q, kk, f = ([_unit(rand(b, 6, seed=10 * j + v).detach()) for v in (0, 1)] for j in range(3))
    frozen_queue = _unit(rand(2, k, 6, seed=99).detach())
    got = pnr_moco_logits(q, kk, f, frozen_queue)
    pos, frozen, others = ref_moco_logits(q, kk, f, frozen_queue)
    for key, ref in (("diag_positive", pos), ("diag_frozen_positive", frozen), ("diag_pseudo_negatives", others),
                     ("diag_gap", pos - frozen)):
        torch.testing.assert_close(got[key], ref, **TOL)
    # hand-built: q = e0 in both views, keys e0, frozen copies e1; view 0's anchors meet frozen_queue[1] (all e0),
    # view 1's frozen_queue[0] (all -e0): positive 1, frozen 0, pseudo-negatives (1 - 1) / 2 = 0; both queues e0: 1
    one = lambda v: v.expand(3, 4)  # noqa: E731
    queue = torch.stack([-E[0].expand(5, 4), E[0].expand(5, 4)])
    got = _values(pnr_moco_logits([one(E[0])] * 2, [one(E[0])] * 2, [one(E[1])] * 2, queue))
    assert got == pytest.approx({"diag_positive": 1.0, "diag_frozen_positive": 0.0, "diag_pseudo_negatives": 0.0,
                                 "diag_gap": 1.0}, abs=1e-12)
    got = _values(pnr_moco_logits([one(E[0])] * 2, [one(E[0])] * 2, [one(E[1])] * 2, queue.abs()))
    assert got["diag_pseudo_negatives"] == pytest.approx(1.0, abs=1e-12)


def test_the_values_are_detached_0d_tensors_outside_any_graph():
    z1, z2, f1, f2 = (rand(3, 4, seed=s) for s in range(4))  # requires_grad
    for d in (pnr_simclr_logits(z1, z2, f1, f2), positive_logit(z1, z2)):
        assert all(v.ndim == 0 and not v.requires_grad and v.grad_fn is None for v in d.values())
    assert float(positive_logit(z1, z1)["diag_positive"]) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("terms,regularizer,kw", [
    (pnr_byol_terms, pnr_byol_regularizer, {}),
    (pnr_barlow_terms, pnr_barlow_regularizer, {"lamb": 5e-3, "scale": 0.1}),
    (pnr_vicreg_terms, pnr_vicreg_regularizer, {}),
])
def test_asymmetric_pull_minus_push_is_the_regularizer_bit_for_bit(terms, regularizer, kw):
    u1, u2, f1, f2 = (torch.randn(8, 5, generator=torch.Generator().manual_seed(s)) for s in range(4))
    pull, push = terms(u1, u2, f1, f2, pos_weight=3.0, neg_weight=2.0, **kw)
    assert torch.equal(pull - push, regularizer(u1, u2, f1, f2, pos_weight=3.0, neg_weight=2.0, **kw))
    # weighted: doubling a weight doubles its term only
    pull2, push2 = terms(u1, u2, f1, f2, pos_weight=6.0, neg_weight=2.0, **kw)
    torch.testing.assert_close(pull2, 2 * pull)
    assert torch.equal(push2, push)


def test_byol_pull_and_push_by_hand():
    # u = f of the same view: pull 0; u1 = f2 and u2 = f1 orthogonal to f1, f2: D = 2 - 2 cos
    u1, u2 = torch.stack([E[0], E[1]]), torch.stack([E[2], E[3]])
    pull, push = pnr_byol_terms(u1, u2, u1.clone(), u2.clone(), pos_weight=1.0, neg_weight=0.5)
    assert float(pull) == pytest.approx(0.0, abs=1e-12)
    assert float(push) == pytest.approx(0.5 * 2.0, abs=1e-12)  # orthogonal: D = 2
