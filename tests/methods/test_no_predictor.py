"""``method.predictor false`` (issue 21): the predictor is the identity, p = z, and each loss is the loss of z against
its stop-gradient target, checked against a float64 restatement of the method's equation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastpnr.config import ModelConfig, build_config
from fastpnr.train.continual import ContinualRun
from fastpnr.methods import METHODS, build_method
from tests.conftest import tiny_overrides

NO_PREDICTOR_METHODS = ["simsiam", "byol", "simsiam_gsg", "byol_gsg"]


def _method(name, predictor=False):
    cfg = METHODS[name][1](name=name, proj_hidden=32, proj_out=8, pred_hidden=16, predictor=predictor)
    return build_method(cfg, ModelConfig(width=8), num_classes=10)


def _cos64(a, b):
    """cos(a_i, b_i) per row, float64, written out: a.b / (|a| |b|)."""
    a, b = a.double(), b.double()
    return (a * b).sum(1) / (a.pow(2).sum(1).sqrt() * b.pow(2).sum(1).sqrt())


def _expected_loss(name, z, k):
    """The method's loss with p = z, restated in float64 (z: online projections, k: the detached targets)."""
    if name == "simsiam":  # 1/2 [-cos(z1, sg z2) - cos(z2, sg z1)]
        return 0.5 * (-_cos64(z[0], k[1]).mean() - _cos64(z[1], k[0]).mean())
    if name == "byol":  # sum over directions of 2 - 2 cos(z_i, sg k_j)
        return (2 - 2 * _cos64(z[0], k[1])).mean() + (2 - 2 * _cos64(z[1], k[0])).mean()
    # GSG, one row at a time: the closest cross-image pair (a, b) of targets; -1/2 [cos(z_1a, k_1a') + cos(z_2b, k_2b')]
    rows = []
    for i in range(z[0].shape[0]):
        d = {(a, b): (k[a][i].double() - k[2 + b][i].double()).norm() for a in (0, 1) for b in (0, 1)}
        a, b = min(d, key=lambda ab: (d[ab], ab))
        c1 = _cos64(z[a][i:i + 1], k[1 - a][i:i + 1])
        c2 = _cos64(z[2 + b][i:i + 1], k[3 - b][i:i + 1])
        rows.append(-0.5 * (c1 + c2))
    return torch.cat(rows).mean()


@pytest.mark.parametrize("name", NO_PREDICTOR_METHODS)
def test_no_predictor_is_the_identity_and_the_loss_is_z_against_its_stop_gradient_target(name):
    torch.manual_seed(0)
    m = _method(name)
    assert isinstance(m.predictor, nn.Identity) and not list(m.predictor.parameters())
    views = [torch.randn(6, 3, 16, 16) for _ in range(m.num_views)]
    out = m.forward_views(views)
    for p, z in zip(out["p"], out["z"]):
        assert torch.equal(p, z)  # p == z
    targets = out["k"] if "k" in out else [z.detach() for z in out["z"]]
    loss, _ = m.ssl_loss(out)
    expected = _expected_loss(name, out["z"], [t.detach() for t in targets])
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)  # fp32 loss vs float64 restatement
    # Stop-gradient: the gradient reaches z only as the source, never through the target.
    zs = out["z"]
    grads = torch.autograd.grad(loss, zs, allow_unused=True)
    z_leaf = [z.detach().double().requires_grad_(True) for z in zs]
    ref = _expected_loss(name, z_leaf, [t.detach().double() for t in targets])
    ref_grads = torch.autograd.grad(ref, z_leaf, allow_unused=True)
    for g, r in zip(grads, ref_grads):
        g = torch.zeros_like(r) if g is None else g.double()
        r = torch.zeros_like(g) if r is None else r
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", NO_PREDICTOR_METHODS)
def test_no_predictor_param_groups_hold_every_parameter_once(name):
    m, with_pred = _method(name), _method(name, predictor=True)
    optim = build_config("smoke").optim
    groups = m.param_groups(optim)
    assert "predictor" not in {g["name"] for g in groups}  # nothing to keep at a fixed lr
    if name != "byol":
        assert "predictor" in {g["name"] for g in with_pred.param_groups(optim)}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    trainable = {id(p) for p in m.parameters() if p.requires_grad}  # the EMA copies are frozen; their probe is not
    assert set(ids) == trainable


@pytest.mark.parametrize("reg", ["cassle", "pnr"])
@pytest.mark.parametrize("name", ["simsiam", "byol_gsg"])
def test_no_predictor_with_a_distilling_strategy(data_root, tmp_path, name, reg):
    """PNR / CaSSLe keep their own distill predictor (a separate head on z): valid without the method's predictor."""
    ov = tiny_overrides(data_root, method=name, regularizer=reg, **{"method.predictor": False, "method.pred_hidden": 32,
                                                                     "regularizer.distill_hidden": 32})
    run = ContinualRun(build_config("smoke", ov), tmp_path, log=lambda *a, **k: None)
    metrics = run.fit()
    assert isinstance(run.method.predictor, nn.Identity)
    assert run.regularizer.active and list(run.regularizer.distill_predictor.parameters())
    assert all(math.isfinite(x) for row in metrics["accuracy_matrix"] for x in row)
