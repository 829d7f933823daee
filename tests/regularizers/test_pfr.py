"""The PFR regularizer: h's layout, the penalty on backbone features, its parameter group and frozen BN mode."""
import pytest
import torch
from torch import nn

from fastpnr.config import build_config
from fastpnr.errors import ConfigError
from fastpnr.methods import build_method
from fastpnr.regularizers import build_regularizer


def _build(mode=None, weight=None, method="byol"):
    ov = {"method": method, "regularizer": "pfr", "method.proj_hidden": 16, "method.proj_out": 8, "model.width": 4}
    if method in ("byol", "simsiam"):
        ov["method.pred_hidden"] = 8
    if mode:
        ov["regularizer.frozen_bn"] = mode
    if weight is not None:
        ov["regularizer.weight"] = weight
    cfg = build_config("smoke", ov)
    torch.manual_seed(0)
    m = build_method(cfg.method, cfg.model, num_classes=10).double()
    reg = build_regularizer(cfg.regularizer, m).double()
    return cfg, m, reg


def test_temporal_projector_is_linear_half_bn_relu_linear_on_the_feature_width():
    _, m, reg = _build()
    d = m.feat_dim
    layers = list(reg.temporal_projector)
    assert [type(x) for x in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[1].num_features) == (d, d // 2, d // 2)
    assert (layers[3].in_features, layers[3].out_features) == (d // 2, d)


def test_penalty_is_minus_weighted_mean_cosine_of_projected_backbone_features():
    _, m, reg = _build(weight=0.7)
    with torch.no_grad():  # a "previous task" model
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reg.begin_task(m, 1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.train(), reg.train()
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(2)]
    out = m.forward_views(views)
    frozen_out = reg.frozen_forward(views)
    loss, logs = reg.penalty(m, out, frozen_out)
    # restated by hand: the frozen backbone in train-mode BN (the default), h on the current backbone features
    frozen = [reg.frozen.backbone(v) for v in views]
    cos = [nn.functional.cosine_similarity(reg.temporal_projector(f), fo, dim=1).mean()
           for f, fo in zip(out["feats"], frozen)]
    # the penalty runs in float32 (as under autocast): float32 rounding of a cosine, ~1e-7
    torch.testing.assert_close(loss.double(), -0.7 * 0.5 * (cos[0] + cos[1]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logs["pfr"], loss.detach())
    loss.backward()
    assert all(p.grad is None for p in m.projector.parameters())  # features, not projector outputs
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    assert all(p.grad is not None for p in reg.temporal_projector.parameters())
    assert all(p.grad is None for p in reg.frozen.parameters())


@pytest.mark.parametrize("mode,want", [(None, True), ("train", True), ("eval", False)])
def test_frozen_bn_defaults_to_train_as_the_authors_wrapper(mode, want):
    _, m, reg = _build(mode)
    reg.begin_task(m, 1)
    reg.train()
    assert all(x.training == want for x in reg.frozen.modules())
    assert reg.temporal_projector.training


def test_own_parameter_group_at_the_base_lr_and_weight_decay():
    cfg, m, reg = _build()
    (group,) = reg.param_groups(cfg.optim)
    assert group["name"] == "temporal_projector"
    assert group["lr"] == cfg.optim.effective_lr(cfg.optim.lr) and group["weight_decay"] == cfg.optim.weight_decay
    assert {id(p) for p in group["params"]} == {id(p) for p in reg.temporal_projector.parameters()}


def test_bad_weight_and_hidden_are_one_line():
    for key, value in (("regularizer.weight", -1.0), ("regularizer.projector_hidden", 0)):
        with pytest.raises(ConfigError) as exc:
            build_config("smoke", {"regularizer": "pfr", key: value})
        assert "\n" not in str(exc.value) and key in str(exc.value)
