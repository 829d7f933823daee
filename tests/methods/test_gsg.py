"""SimSiam-GSG and BYOL-GSG (anchors §4): the guided pair choice, the 4-view / permuted-batch flow, the continual loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastpnr.config import ModelConfig, build_config
from fastpnr.train.continual import ContinualRun
from fastpnr.losses import gsg_pairing
from fastpnr.methods import METHODS, build_method
from fastpnr.methods.gsg import BYOLGSG, SimSiamGSG
from tests.conftest import tiny_overrides

GSG_METHODS = ["simsiam_gsg", "byol_gsg"]


def _small(name, **kw):
    cfg = METHODS[name][1](name=name, proj_hidden=32, proj_out=8, pred_hidden=16, **kw)
    return build_method(cfg, ModelConfig(), num_classes=10)


def test_registry_configs_and_contract():
    assert METHODS["simsiam_gsg"][0] is SimSiamGSG and METHODS["byol_gsg"][0] is BYOLGSG
    for name in GSG_METHODS:
        cfg = METHODS[name][1](name=name)
        # SimSiam heads for both (anchors §4.2): 2048-2048-2048 projector, 2048 -> 512 -> 2048 predictor.
        assert (cfg.proj_hidden, cfg.proj_out, cfg.pred_hidden, cfg.fix_pred_lr) == (2048, 2048, 512, True)
        m = _small(name)
        assert m.num_views == 4 and m.regularizer_kind == "byol"
        assert m.projector[-1].affine is False  # last BN affine-free
        groups = {g["name"]: g for g in m.param_groups(build_config("smoke").optim)}
        assert groups["predictor"].get("static_lr")
        names = {id(p) for g in groups.values() for p in g["params"]}
        assert all(id(p) not in names for n, p in m.named_parameters() if n.startswith("momentum_"))
    assert BYOLGSG.momentum_pairs is not SimSiamGSG.momentum_pairs and not _small("simsiam_gsg").momentum_pairs()


def test_byol_gsg_ema_momentum_is_a_constant_0_99():
    m = _small("byol_gsg")
    for step, total in ((1, 100), (50, 100), (100, 100)):
        with torch.no_grad():
            for p in m.projector.parameters():
                p.add_(1.0)
        online = [p.detach().clone() for p in m.projector.parameters()]
        ema = [p.detach().clone() for p in m.momentum_projector.parameters()]
        m.after_step(step, total)
        for o, e, new in zip(online, ema, m.momentum_projector.parameters()):
            torch.testing.assert_close(new, 0.99 * e + 0.01 * o)


def _constructed_out(name):
    """Row 0: the closest cross-image pair is (12, 21); row 1: (11, 22). Targets far from the other pairs."""
    e = torch.eye(4)
    k11 = torch.stack([e[0] * 10, e[0] * 0])
    k12 = torch.stack([e[1] * 0, e[1] * 10])
    k21 = torch.stack([e[1] * 0.1, e[2] * 10])
    k22 = torch.stack([e[3] * 10, e[0] * 0.2])
    ks = [k11, k12, k21, k22]
    ps = [torch.randn(2, 4, requires_grad=True) for _ in range(4)]
    out = {"p": ps, "k": ks, "z": [k.clone().requires_grad_(True) for k in ks]}
    if name == "simsiam_gsg":
        out["k"] = [z.detach() for z in out["z"]]
    return out


@pytest.mark.parametrize("name", GSG_METHODS)
def test_gsg_picks_the_closer_pair_constructed(name):
    torch.manual_seed(0)
    m = _small(name)
    out = _constructed_out(name)
    a, b = gsg_pairing(*out["k"])
    assert a.tolist() == [1, 0] and b.tolist() == [0, 1]
    loss, logs = m.ssl_loss(out)
    loss.backward()
    g = [p.grad.abs().sum(dim=1) for p in out["p"]]  # per row
    # row 0: sources p12 and p21; row 1: sources p11 and p22; the others get nothing
    assert g[1][0] > 0 and g[2][0] > 0 and g[0][0] == 0 and g[3][0] == 0
    assert g[0][1] > 0 and g[3][1] > 0 and g[1][1] == 0 and g[2][1] == 0
    assert all(z.grad is None for z in out["z"])  # targets are stop-gradient
    assert torch.isfinite(logs[name])


@pytest.mark.parametrize("name", GSG_METHODS)
def test_gradient_reaches_only_the_selected_sources_end_to_end(name):
    torch.manual_seed(1)
    m = _small(name)
    views = [torch.randn(6, 3, 8, 8) for _ in range(4)]
    out = m.forward_views(views)
    assert all(len(out[k]) == 4 for k in ("feats", "z", "p", "k"))
    for p in out["p"]:
        p.retain_grad()
    loss, _ = m.ssl_loss(out)
    loss.backward()
    a, b = gsg_pairing(*out["k"])
    got = torch.stack([p.grad.abs().sum(dim=1) > 0 for p in out["p"]], dim=1)  # (N, 4): 11, 12, 21, 22
    want = torch.stack([a == 0, a == 1, b == 0, b == 1], dim=1)
    assert torch.equal(got, want)
    assert all(not k.requires_grad for k in out["k"])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    if name == "byol_gsg":
        assert all(p.grad is None for p in m.momentum_backbone.parameters())


def _identity_dataset(n=16, size=8):
    from tests.loaders.utils import FakeDataset

    ids = np.arange(n)
    images = np.broadcast_to((ids * 8).astype(np.uint8)[:, None, None, None], (n, size, size, 3)).copy()
    return FakeDataset(images, ids.astype(np.int64) % 10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _image_id(x):
    return torch.round(x.float().mean(dim=(1, 2, 3)) * 255 / 8).long()


@pytest.mark.parametrize("name", GSG_METHODS)
def test_four_views_and_the_second_image_is_the_permuted_batch(name):
    from loaders import ViewConfig, make_loader

    torch.manual_seed(0)
    m = _small(name).double()  # float64: the comparison below sums BatchNorm rows in another order
    ds = _identity_dataset()
    ev = ViewConfig.eval(8, mean=ds.mean, std=ds.std)
    loader = make_loader("gpu", ds, batch_size=8, num_views=m.num_views, device="cpu", seed=0,
                         view_configs=[ev] * m.num_views)
    views, labels, indices = next(iter(loader))
    assert len(views) == 4
    for v in views:  # the loader's views are all of the batch's own images
        assert torch.equal(_image_id(v), indices)
    views = [v.double() for v in views]

    torch.manual_seed(3)
    out = m.forward_views(views)
    r = out["perm"]
    assert sorted(r.tolist()) == list(range(8)) and (r != torch.arange(8)).sum() >= 4  # row i pairs i with r(i) != i
    # Entries 2, 3 are those of the permuted batch, as if the encoders had been fed views[2][r], views[3][r] (the
    # permutation is applied to their outputs; each view's BatchNorm sees the same rows, so the numbers agree).
    torch.manual_seed(3)
    fed = m.forward_views([views[0], views[1], views[2][r], views[3][r]])
    # The BatchNorm sums of views 2, 3 run over the rows in another order: in float64 the entries differ by at most
    # 3e-13 (measured 2026-12-03, both methods, 1 and 2 torch threads; float32: 7e-5, which failed an atol of 1e-4
    # under load). 1e-9 leaves 3000x headroom; feeding BatchNorm other rows would differ by ~1e-1.
    for key in ("feats", "z", "p", "k"):
        torch.testing.assert_close(out[key][2], fed[key][2][fed["perm"].argsort()], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out[key][0], fed[key][0], rtol=1e-9, atol=1e-9)
    torch.manual_seed(3)  # r comes from the global RNG: reseeding (resume) reproduces it
    assert torch.equal(m.forward_views(views)["perm"], r)
    # Regularizers see the first image's two views only.
    assert len(m.distill_input(out)) == 2 and m.distill_input(out)[0] is out["z"][0]


@pytest.mark.parametrize("reg", ["finetune", "cassle", "pnr"])
@pytest.mark.parametrize("method", GSG_METHODS)
def test_two_task_continual_smoke_run(data_root, tmp_path, method, reg):
    ov = tiny_overrides(data_root, method=method, regularizer=reg, **{"method.pred_hidden": 32})
    if reg != "finetune":
        ov["regularizer.distill_hidden"] = 32
    cfg = build_config("smoke", ov)
    run = ContinualRun(cfg, tmp_path, log=lambda *a, **k: None)
    metrics = run.fit()
    matrix = metrics["accuracy_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert all(math.isfinite(x) for row in matrix for x in row)
    assert run.method.num_views == 4
    if reg == "finetune":
        assert not run.regularizer.active and run.regularizer.frozen is None
        return
    assert run.regularizer.active and run.regularizer.kind == "byol"
    frozen = dict(run.regularizer.frozen.backbone.named_parameters())
    diff = sum((p - frozen[n]).abs().sum().item() for n, p in run.method.backbone.named_parameters())
    assert diff > 0  # the frozen model is the task-0 model; task 1's steps moved the current one
    assert all(not p.requires_grad for p in run.regularizer.frozen.parameters())
