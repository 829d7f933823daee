"""Collapse measures (fastpnr.eval.collapse): normalized per-channel std and effective rank, on cases with known values,
and their logging (TensorBoard every log_every steps, metrics.json per epoch)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fastpnr.eval.collapse import collapse_measures, effective_rank, normalized_std


def test_std_of_a_constant_embedding_is_zero():
    z = torch.randn(1, 32).repeat(64, 1)
    assert normalized_std(z).item() == 0.0
    # a rescaled copy of one direction is the same point on the sphere: still collapsed
    scaled = z * torch.linspace(0.5, 3.0, 64).unsqueeze(1)
    assert normalized_std(scaled.double()).item() < 1e-6  # float32 normalization of one direction: rounding only


@pytest.mark.parametrize("d", [16, 128])
def test_std_of_isotropic_gaussian_rows_is_one_over_sqrt_d(d):
    """n = z/|z| has mean 0 and variance exactly 1/d per channel. The sample std s of one channel over B rows has
    sampling sd <= sigma / sqrt(2 (B - 1)) (the Gaussian value; n_j is lighter-tailed than a Gaussian, and the
    unit-norm constraint correlates channels negatively, both of which only shrink the spread of the mean over
    channels) and bias |E s - sigma| <= sigma / (4 (B - 1)) to first order. The mean over d channels: the bound
    below is 5 of those sds plus twice the bias."""
    gen = torch.Generator().manual_seed(0)
    b = 8192
    z = torch.randn(b, d, generator=gen, dtype=torch.float64)
    sigma = 1 / math.sqrt(d)
    tol = 5 * sigma / math.sqrt(2 * (b - 1) * d) + 2 * sigma / (4 * (b - 1))
    assert abs(normalized_std(z).item() - sigma) < tol
    # not a tautology: a collapsed half of the channels moves it far outside the bound
    z[:, : d // 2] = 1.0
    assert abs(normalized_std(z).item() - sigma) > 10 * tol


@pytest.mark.parametrize("k", [1, 3, 10])
def test_effective_rank_of_rank_k_with_equal_singular_values_is_k(k):
    gen = torch.Generator().manual_seed(k)
    u, _ = torch.linalg.qr(torch.randn(64, k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(48, k, generator=gen, dtype=torch.float64))
    z = 2.5 * u @ v.T  # singular values: k times 2.5, then zeros
    assert effective_rank(z).item() == pytest.approx(k, rel=1e-9)


def test_effective_rank_of_a_random_rank_k_matrix_is_at_most_k_and_matches_the_entropy():
    gen = torch.Generator().manual_seed(1)
    k = 5
    z = torch.randn(64, k, generator=gen, dtype=torch.float64) @ torch.randn(k, 40, generator=gen, dtype=torch.float64)
    s = torch.linalg.svdvals(z)[:k]
    p = s / s.sum()
    expected = math.exp(-sum(float(x) * math.log(float(x)) for x in p))  # the definition, over the k nonzero values
    got = effective_rank(z).item()
    assert got == pytest.approx(expected, rel=1e-8)
    assert 1 < got <= k + 1e-9


def test_effective_rank_of_a_constant_embedding_is_one_and_of_zeros_is_zero():
    assert effective_rank(torch.ones(16, 8)).item() == pytest.approx(1.0, rel=1e-6)
    assert effective_rank(torch.zeros(16, 8)).item() == 0.0


def test_collapse_measures_are_device_tensors_and_reject_bad_shapes():
    m = collapse_measures(torch.randn(8, 4, requires_grad=True))
    assert set(m) == {"collapse_std", "effective_rank"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 and not v.requires_grad for v in m.values())
    with pytest.raises(ValueError, match="B >= 2"):
        normalized_std(torch.randn(1, 4))
    with pytest.raises(ValueError, match="shape"):
        effective_rank(torch.randn(4))


def test_a_run_logs_the_measures_to_tensorboard_and_per_epoch_to_metrics(data_root, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from fastpnr.config import build_config
    from fastpnr.train.continual import ContinualRun
    from tests.conftest import tiny_overrides
    from tests.run.test_run_folder import _events

    ov = tiny_overrides(data_root, method="simsiam", regularizer="finetune",
                        **{"method.pred_hidden": 16, "data.num_tasks": 1, "optim.epochs": 2,
                           "eval.forward_transfer": False})
    ContinualRun(build_config("smoke", ov), tmp_path, log=lambda *a, **k: None).fit()
    epochs = json.loads((tmp_path / "metrics.json").read_text())["train_epochs"]
    assert [(e["task"], e["epoch"]) for e in epochs] == [(0, 0), (0, 1)]
    d = 32  # tiny_overrides' method.proj_out
    for e in epochs:
        # mean_j s_j <= sqrt(mean_j s_j^2) (Jensen) and sum_j s_j^2 <= B/(B-1) for unit rows: <= sqrt(B/(B-1)/d)
        assert 0 <= e["collapse_std"] <= math.sqrt(16 / 15 / d) + 1e-6
        assert 1 <= e["effective_rank"] <= 16  # at most min(B, D); batch 16
    events = _events(tmp_path / "tb")
    assert sorted(s for t, s in events if t == "train/collapse_std") == [1, 2, 3, 4]  # log_every 1, 4 steps
    assert sorted(s for t, s in events if t == "train/effective_rank") == [1, 2, 3, 4]
