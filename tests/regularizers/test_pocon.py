"""The POCON regularizer: its phases and their epochs, the heads, the hand-overs between phases, the phase-2 loss
against a restatement of sslModels.py L146-190, and which network each phase trains."""
import pytest
import torch
from torch import nn

from fastpnr.config import OptimConfig, TrainConfig, build_config
from fastpnr.errors import ConfigError
from fastpnr.methods import build_method
from fastpnr.train.optim import build_optimizer
from fastpnr.regularizers import Regularizer, build_regularizer
from fastpnr.regularizers.pocon import POCON, pocon_phase_epochs
from fastpnr.train.trainer import Trainer


def _build(method="barlow", _model_zero_init=None, **reg):
    ov = {"method": method, "regularizer": "pocon", "method.proj_hidden": 16, "method.proj_out": 8, "model.width": 2,
          **{f"regularizer.{k}": v for k, v in reg.items()}}
    if _model_zero_init is not None:
        ov["model.zero_init_residual"] = _model_zero_init
    if method in ("byol", "simsiam"):
        ov["method.pred_hidden"] = 8
    cfg = build_config("smoke", ov)
    torch.manual_seed(0)
    m = build_method(cfg.method, cfg.model, num_classes=10)
    return cfg, m, build_regularizer(cfg.regularizer, m)


def _views(seed=3, b=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 8, 8, generator=g) for _ in range(2)]


def test_phase_epochs_follow_the_authors_ratios_and_options():
    cfg = build_config("smoke", {"regularizer": "pocon"}).regularizer
    assert pocon_phase_epochs(cfg, 0, 500) == [("expert", 500), ("main", 500)]  # nepochs, task1_Retnepochs
    assert pocon_phase_epochs(cfg, 3, 500) == [("expert", 500), ("main", 250)]  # ret_nepochs
    assert pocon_phase_epochs(cfg, 1, 1) == [("expert", 1), ("main", 1)]
    cfg = build_config("smoke", {"regularizer": "pocon", "regularizer.expert_epochs": 3, "regularizer.main_epochs": 2,
                                 "regularizer.main_epochs_task0": 4}).regularizer
    assert pocon_phase_epochs(cfg, 0, 9) == [("expert", 3), ("main", 4)]
    assert pocon_phase_epochs(cfg, 1, 9) == [("expert", 3), ("main", 2)]


@pytest.mark.parametrize("field", ["main_epochs", "main_epochs_task0", "expert_epochs"])
def test_a_phase_without_epochs_is_one_line(field):
    with pytest.raises(ConfigError) as exc:
        build_config("smoke", {"regularizer": "pocon", f"regularizer.{field}": 0})
    msg = str(exc.value)
    assert "\n" not in msg and f"regularizer.{field}=0" in msg and "both POCON phases need epochs" in msg


def _last_bn_weights(backbone):
    from fastpnr.models.resnet import BasicBlock, Bottleneck

    return [m.last_bn().weight for m in backbone.modules() if isinstance(m, (BasicBlock, Bottleneck))]


@pytest.mark.parametrize("zero_init,expected", [(None, True), ("false", False), ("true", True)])
def test_main_and_expert_residual_blocks_start_zeroed_as_the_authors(zero_init, expected):
    """The authors build both networks as ``models.resnet18(zero_init_residual=True)`` (sslModels.py L60/L65,
    copyOPscratch.py L448): POCON's default; ``model.zero_init_residual false`` keeps the PNR code's init."""
    extra = {} if zero_init is None else {"model.zero_init_residual": zero_init}
    cfg = build_config("smoke", {"regularizer": "pocon", **extra})
    assert cfg.model.zero_init_residual is expected
    _, m, reg = _build(**({} if zero_init is None else {"_model_zero_init": zero_init}))
    for backbone in (m.backbone, reg.expert.backbone):
        weights = _last_bn_weights(backbone)
        assert len(weights) == 8  # ResNet-18: 8 basic blocks
        assert all(bool((w == 0).all()) == expected for w in weights)
        # the other BN weights start at one either way
        others = [mod.weight for mod in backbone.modules() if isinstance(mod, nn.BatchNorm2d)
                  and all(mod.weight is not w for w in weights)]
        assert others and all(bool((w == 1).all()) for w in others)


def test_other_strategies_keep_the_pnr_codes_init():
    for reg in ("finetune", "pnr", "cassle", "pfr"):
        assert build_config("smoke", {"regularizer": reg}).model.zero_init_residual is False
    cfg = build_config("smoke", {"regularizer": "pnr", "model.zero_init_residual": "true"})
    assert cfg.model.zero_init_residual is True


def test_heads_are_the_authors_configuration():
    _, m, reg = _build()
    d = m.feat_dim
    lin = [x for x in reg.expert_head if isinstance(x, nn.Linear)]
    assert [(x.in_features, x.out_features) for x in lin] == [(d, 2 * d), (2 * d, d), (d, 2 * d), (2 * d, d)]
    assert lin[0].bias is None and sum(isinstance(x, nn.BatchNorm1d) for x in reg.expert_head) == 3
    (ret,) = reg.retro_head
    assert isinstance(ret, nn.Linear) and (ret.in_features, ret.out_features) == (d, d) and ret.bias is not None


def test_phase_hand_overs():
    _, m, reg = _build()
    reg.begin_task(m, 0)
    reg.begin_phase(m, 0, "expert")
    assert not reg.has_old and not reg._has_old_host
    with torch.no_grad():  # the expert trains ...
        for p in reg.expert.backbone.parameters():
            p.add_(0.1)
        for p in reg.expert_head.parameters():
            p.add_(1.0)
    before = [p.clone() for p in reg.expert_head.parameters()]
    reg.begin_phase(m, 0, "main")  # ... then is frozen as copyExpert (L539); h_exp is re-initialized (L548)
    for (n, a), b in zip(reg.expert.backbone.state_dict().items(), reg.expert_frozen.state_dict().values()):
        assert torch.equal(a, b), n
    assert not all(torch.equal(a, b) for a, b in zip(before, reg.expert_head.parameters()))
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.2)
    reg.begin_task(m, 1)
    reg.begin_phase(m, 1, "expert")  # the expert restarts from the main backbone (L589), kept as the old one (L483)
    for source in (reg.expert.backbone, reg.old_backbone):
        for (n, a), b in zip(m.backbone.state_dict().items(), source.state_dict().values()):
            assert torch.equal(a, b), n
    assert reg.has_old and reg._has_old_host


def test_main_phase_loss_matches_restatement_and_trains_only_the_main_side():
    _, m, reg = _build(expert_weight=0.5, retro_weight=25.0)
    reg.begin_task(m, 0), reg.begin_phase(m, 0, "expert"), reg.begin_phase(m, 0, "main")
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reg.begin_task(m, 1), reg.begin_phase(m, 1, "expert")
    with torch.no_grad():
        for net in (m.backbone, reg.expert.backbone):
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    reg.begin_phase(m, 1, "main")
    m.train(), reg.train()
    assert not reg.expert_frozen.training and not reg.old_backbone.training  # set_bn_eval (L546, L557)
    views = _views()
    out = m.forward_views(views)
    frozen_out = reg.frozen_forward(views)
    loss, logs = reg.penalty(m, out, frozen_out)
    n = nn.functional.normalize
    f1, f2 = out["feats"]
    with torch.no_grad():
        e = [reg.expert_frozen(v) for v in views]
        o = [reg.old_backbone(v) for v in views]
    adapt = 0.5 * (torch.dist(n(reg.expert_head(f1)), n(e[0])) + torch.dist(n(reg.expert_head(f2)), n(e[1])))
    retro = 25.0 * (torch.dist(n(reg.retro_head(f1)), n(o[0])) + torch.dist(n(reg.retro_head(f2)), n(o[1])))
    torch.testing.assert_close(loss, adapt + retro, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logs["pocon_retro"], retro.detach(), rtol=1e-5, atol=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())
    assert all(p.grad is not None for p in [*reg.expert_head.parameters(), *reg.retro_head.parameters()])
    assert all(p.grad is None for p in [*reg.expert.parameters(), *reg.expert_frozen.parameters(),
                                        *reg.old_backbone.parameters(), *m.projector.parameters()])


def test_task_zero_main_phase_has_no_retrospection():
    _, m, reg = _build()
    reg.begin_task(m, 0), reg.begin_phase(m, 0, "expert"), reg.begin_phase(m, 0, "main")
    views = _views()
    frozen_out = reg.frozen_forward(views)
    assert set(frozen_out) == {"expert"}
    _, logs = reg.penalty(m, m.forward_views(views), frozen_out)
    assert set(logs) == {"pocon_adapt"}


def test_expert_phase_steps_train_the_expert_and_leave_the_main_network():
    cfg, m, reg = _build()
    reg.begin_task(m, 0), reg.begin_phase(m, 0, "expert")
    net, step_reg = reg.phase_modules(m, "expert")
    assert net is reg.expert and type(step_reg) is Regularizer and not step_reg.active
    optim_cfg = OptimConfig(batch_size=6, epochs=1, warmup_epochs=0)
    opt = build_optimizer(net.param_groups(optim_cfg) + step_reg.param_groups(optim_cfg), optim_cfg)
    trainer = Trainer(net, step_reg, opt, TrainConfig(device="cpu", precision="fp32", online_probe="off",
                                                       cuda_graph=False, progress=False), torch.device("cpu"))
    main_before = {k: v.clone() for k, v in m.state_dict().items()}
    expert_before = [p.clone() for p in reg.expert.backbone.parameters()]
    trainer.step(_views(), torch.zeros(6, dtype=torch.long), None, 0, 1)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in main_before.items())
    assert not all(torch.equal(a, b) for a, b in zip(expert_before, reg.expert.backbone.parameters()))
    main_net, main_reg = reg.phase_modules(m, "main")
    assert main_net is m and main_reg is reg and reg.replaces_ssl_loss and reg.active


def test_state_dict_holds_every_network_of_both_phases():
    _, m, reg = _build()
    keys = set(reg.state_dict())
    for prefix in ("expert.backbone.", "expert.projector.", "expert_frozen.", "old_backbone.", "expert_head.",
                   "retro_head.", "has_old"):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert isinstance(reg, POCON)
