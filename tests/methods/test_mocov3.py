"""MoCo v3: its heads (the official builder's), the loss it computes from its outputs, the momentum schedule, the
frozen patch projection in training, and a short continual run under every strategy on a ViT."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastpnr.config import build_config
from fastpnr.methods import build_method
from fastpnr.regularizers import REGULARIZERS

SMALL = {"method": "mocov3", "method.proj_hidden": 16, "method.pred_hidden": 16, "method.proj_out": 8,
         "data.image_size": 32}  # CIFAR-10 at its native size (smoke runs at 16 px)
VIT = {"model.backbone": "vit_tiny", "model.patch_size": 4, "model.depth": 2}


def _method(**ov):
    cfg = build_config("smoke", {**SMALL, **ov})
    torch.manual_seed(0)
    return cfg, build_method(cfg.method, cfg.model, num_classes=10)


def _kinds(seq: nn.Sequential) -> list[str]:
    return [type(m).__name__ + ("-nobias" if isinstance(m, nn.Linear) and m.bias is None else "")
            + ("-noaffine" if isinstance(m, nn.BatchNorm1d) and not m.affine else "") for m in seq]


def test_heads_follow_the_official_builder():
    _, vit = _method(**VIT)
    assert _kinds(vit.projector) == ["Linear-nobias", "BatchNorm1d", "ReLU", "Linear-nobias", "BatchNorm1d", "ReLU",
                                     "Linear-nobias", "BatchNorm1d-noaffine"]
    assert vit.projector[0].in_features == 192 and vit.projector[-2].out_features == 8
    assert _kinds(vit.predictor) == ["Linear-nobias", "BatchNorm1d", "ReLU", "Linear-nobias", "BatchNorm1d-noaffine"]
    _, resnet = _method(**{"model.width": 4})  # MoCo_ResNet: a 2-layer projector, a predictor without its last BN
    assert _kinds(resnet.projector) == ["Linear-nobias", "BatchNorm1d", "ReLU", "Linear-nobias", "BatchNorm1d-noaffine"]
    assert _kinds(resnet.predictor) == ["Linear-nobias", "BatchNorm1d", "ReLU", "Linear-nobias"]
    assert not hasattr(vit, "momentum_predictor") and len(vit.momentum_pairs()) == 2


def test_loss_of_the_outputs_is_the_symmetric_2t_cross_entropy():
    cfg, m = _method(**VIT)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(6, 3, 32, 32, generator=g) for _ in range(2)]
    out = m.forward_views(views)
    loss, logs = m.ssl_loss(out)
    t = cfg.method.temperature
    q = [F.normalize(x.detach().double(), dim=1) for x in out["p"]]
    k = [F.normalize(x.detach().double(), dim=1) for x in out["k"]]
    labels = torch.arange(6)
    want = sum(2 * t * F.cross_entropy(qa @ kb.T / t, labels) for qa, kb in ((q[0], k[1]), (q[1], k[0])))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5) and "mocov3" in logs


def test_momentum_rises_from_0_99_to_1_on_a_cosine():
    _, m = _method(**VIT)
    assert m.ema_tau(0, 100) == pytest.approx(0.99) and m.ema_tau(100, 100) == pytest.approx(1.0)
    assert m.ema_tau(50, 100) == pytest.approx(0.995)


def test_a_frozen_patch_projection_stays_at_its_random_init_in_training():
    from fastpnr.regularizers import build_regularizer
    from fastpnr.train.optim import build_optimizer

    cfg, m = _method(**VIT, **{"model.freeze_patch_embed": True, "model.pos_embed": "sincos"})
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    reg = build_regularizer(cfg.regularizer, m)
    opt = build_optimizer(m.param_groups(cfg.optim) + reg.param_groups(cfg.optim), cfg.optim)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    m.ssl_loss(m.forward_views(views))[0].backward()
    opt.step()
    after = m.backbone.state_dict()
    for key in ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed"):
        assert torch.equal(before[key], after[key])
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("strategy", sorted(REGULARIZERS))
def test_every_strategy_runs_a_continual_vit_mocov3_run(data_root, tmp_path, strategy):
    from fastpnr.train.continual import ContinualRun
    from tests.conftest import tiny_overrides

    ov = tiny_overrides(data_root, **{k: v for k, v in SMALL.items() if k != "data.image_size"}, **VIT, **{"regularizer": strategy, "data.image_size": 16,
                                                      "train.steps_per_epoch": 1})
    if strategy in ("pnr", "cassle", "cla_e", "cla_r"):
        ov["regularizer.distill_hidden"] = 16
    if strategy in ("er", "lump", "cla_r"):  # the replay buffer fills in task 0's one step of 16
        ov["regularizer.buffer_size"] = 16
    cfg = build_config("smoke", ov)
    ContinualRun(cfg, tmp_path, log=lambda *a, **k: None).fit()
    assert (tmp_path / "task1.pt").is_file()
    import json
    matrix = json.loads((tmp_path / "metrics.json").read_text())["accuracy_matrix"]
    assert len(matrix) == 2 and all(0 <= a <= 100 for a in matrix[1][:2])


def test_pnr_replaces_the_loss_with_its_symmetric_form_and_cassle_adds_the_predictive_distiller():
    """From task 1 on: PNR's penalty is pnr_mocov3_loss of (p, k, the distill predictor of z, the frozen z) and
    replaces MoCo v3's loss; CaSSLe's is predictive_distill of the distill predictor of z and the frozen z."""
    from fastpnr.losses import pnr_mocov3_loss, predictive_distill
    from fastpnr.regularizers import build_regularizer

    views = [torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for strategy in ("pnr", "cassle"):
        cfg, m = _method(**VIT, **{"regularizer": strategy, "regularizer.distill_hidden": 16})
        reg = build_regularizer(cfg.regularizer, m)
        reg.begin_task(m, 0)
        reg.begin_task(m, 1)
        out, frozen = m.forward_views(views), reg.frozen_forward(views)
        loss, _ = reg.penalty(m, out, frozen)
        u = [reg.distill_predictor(z) for z in out["z"]]
        if strategy == "pnr":
            assert reg.replaces_ssl_loss
            want = pnr_mocov3_loss(*out["p"], *out["k"], *u, *frozen["z"], temperature=cfg.method.temperature,
                                   distill_temperature=cfg.regularizer.distill_temperature)
        else:
            assert not reg.replaces_ssl_loss
            want = predictive_distill(*u, *frozen["z"])
        torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
