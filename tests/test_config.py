"""Configuration: presets resolve, overrides cast, bad values fail with one line naming field, value and allowed."""
from __future__ import annotations

import pytest

from fastpnr.config import PRESETS, build_config, config_from_dict
from fastpnr.errors import ConfigError


def test_every_preset_resolves_for_every_method():
    from fastpnr.methods import METHODS

    for preset in PRESETS:
        for method in METHODS:
            cfg = build_config(preset, {"method": method})
            assert cfg.method.name == method


def test_per_method_preset_values_follow_the_anchor_scripts():
    byol = build_config("cifar100-5t", {"method": "byol"})
    assert (byol.optim.lr, byol.optim.weight_decay, byol.method.proj_hidden, byol.method.pred_hidden) == (1.0, 1e-5, 4096, 4096)
    assert byol.regularizer.neg_weight == 0.5
    moco = build_config("cifar100-5t", {"method": "mocov2plus"})
    assert moco.optim.exclude_bias_n_norm is False and moco.method.final_tau == 0.999
    vic = build_config("cifar100-5t", {"method": "vicreg"})
    assert vic.data.min_scale == 0.2 and vic.regularizer.neg_weight == 23.0


def test_presets_of_datasets_without_a_fixed_size_set_image_size():
    """ImageNet-100 (imagefolder) and DomainNet images come in every size: decoding needs an explicit image_size."""
    from fastpnr.data.registry import get_spec

    for preset in PRESETS:
        cfg = build_config(preset)
        if get_spec(cfg.data.dataset).native_size is None:
            assert cfg.data.image_size == 224, preset


def test_domainnet_preset_follows_the_anchor_scripts():
    from fastpnr.data.registry import DOMAINNET_DOMAINS

    cfg = build_config("domainnet-6t")
    d = cfg.data
    assert (d.dataset, d.scenario, d.num_tasks, d.domain_order) == ("domainnet", "domain", 6, DOMAINNET_DOMAINS)
    assert d.domain_order == ("real", "quickdraw", "painting", "sketch", "infograph", "clipart")
    assert (d.image_size, d.crop_size, d.blur_prob, d.loader, cfg.model.cifar_stem) == (224, 224, (1.0, 0.1), "dali", False)
    assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (200, 256, 0.4, 1e-4)
    assert (cfg.regularizer.name, cfg.regularizer.frozen_bn, cfg.eval.protocol) == ("pnr", "eval", "official")
    neg = {m: build_config("domainnet-6t", {"method": m}).regularizer.neg_weight for m in ("byol", "barlow", "vicreg")}
    assert neg == {"byol": 1.0, "barlow": 1.0, "vicreg": 8.0}
    byol = build_config("domainnet-6t", {"method": "byol"})
    assert (byol.optim.lr, byol.optim.weight_decay) == (0.6, 1e-5)
    vic = build_config("domainnet-6t", {"method": "vicreg"})
    assert (vic.optim.lr, vic.data.min_scale, vic.regularizer.pos_weight) == (0.4, 0.2, 25.0)
    assert build_config("domainnet-6t", {"method": "mocov2plus"}).optim.lr == 0.6


def test_overrides_are_cast_and_user_values_win():
    cfg = build_config("smoke", {"optim.lr": "0.25", "train.precision": "fp32", "data.solarize_prob": "0.1,0.3",
                                 "model.cifar_stem": "false", "epochs": 3, "data-dir": "/x"})
    assert cfg.optim.lr == 0.25 and cfg.train.precision == "fp32" and cfg.data.solarize_prob == (0.1, 0.3)
    assert cfg.model.cifar_stem is False and cfg.optim.epochs == 3 and cfg.data.data_dir == "/x"
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("overrides, needle", [
    ({"method": "simclrr"}, "method='simclrr' is invalid; allowed: barlow"),
    ({"regularizer": "ewc"}, "regularizer='ewc' is invalid; allowed: cassle"),
    ({"optim.lrr": 1}, "optim.lrr is not a known option"),
    ({"optim.lr": -1}, "optim.lr=-1.0 is invalid; allowed: > 0"),
    ({"optim.batch_size": 2.5}, "optim.batch_size=2.5 is invalid"),
    ({"data.scenario": "task"}, "data.scenario='task' is invalid; allowed: class, data, domain"),
    ({"train.precision": "fp8"}, "train.precision='fp8' is invalid; allowed: auto, bf16, fp16, fp32"),
    ({"bogus": 1}, "option 'bogus' is not known"),
    ({"data.train_fraction": 0}, "data.train_fraction=0.0 is invalid"),
    ({"model.backbone": "vit"}, "model.backbone='vit' is invalid; allowed: resnet18, resnet50, vit_base, vit_small, vit_tiny"),
    ({"model.width": 0}, "model.width=0 is invalid; allowed: an integer >= 1"),
    ({"regularizer.frozen_bn": "off"}, "regularizer.frozen_bn='off' is invalid; allowed: eval, train"),
    ({"train.matmul_precision": "tf32"}, "train.matmul_precision='tf32' is invalid; allowed: highest, high, medium"),
    ({"data.ffcv_order": "shuffled"}, "data.ffcv_order='shuffled' is invalid; allowed: random, quasi_random, sequential"),
    ({"data.ffcv_order": "quasi_random"}, "data.ffcv_os_cache=True is invalid; allowed: false with data.ffcv_order"),
    ({"data.ffcv_crop": "cpu"}, "data.ffcv_crop='cpu' is invalid; allowed: device, decoder"),
    ({"method": "byol", "method.final_tau": 0.5}, "method.final_tau=0.5 is invalid"),
    ({"train.online_probe": "off", "eval.protocol": "online"},
     "eval.protocol='online' is invalid; allowed: linear or knn with --train.online_probe off"),
])
def test_bad_configuration_fails_with_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        build_config("smoke", overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset='nope' is invalid; allowed: cifar10-5t"):
        build_config("nope")


def test_vicreg_pnr_rejects_unbounded_weights():
    """Refused when the configuration is built (before a run folder or data is touched), not when the model is."""
    with pytest.raises(ConfigError, match=r"regularizer.neg_weight=25.0 is invalid for VICReg-PNR; allowed: < regularizer.pos_weight"):
        build_config("smoke", {"method": "vicreg", "regularizer": "pnr", "regularizer.neg_weight": 25.0,
                               "regularizer.pos_weight": 25.0})


# The anchors train the online probe on CIFAR-100 only (csm9493/PNR main_pretrain.py: online_eval_batch_size is set
# for cifar100 alone); fastpnr's presets on ImageNet-100 recipes follow the ImageNet-100 protocol.
ANCHOR_PROBE = {"cifar100-5t": "full", "cifar100-10t": "full", "imagenet100-5t": "off", "imagenet100-data-5t": "off",
                "domainnet-6t": "off", "tinyimagenet100-5t": "off", "pacs-domain": "off"}


@pytest.mark.parametrize("preset", sorted(ANCHOR_PROBE))
def test_online_probe_is_trained_only_where_the_anchors_train_it(preset):
    for method in ("simclr", "mocov2plus", "byol", "vicreg"):
        assert build_config(preset, {"method": method}).train.online_probe == ANCHOR_PROBE[preset], (preset, method)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_cassle_and_pnr_run_the_frozen_model_in_the_same_bn_mode(preset):
    """The PNR repo runs its CaSSLe baselines through PNR's distill wrapper (frozen model in eval mode; the CIFAR runs
    are put back in train mode by every validation): a CaSSLe-vs-PNR comparison must not differ in it."""
    expected = "train" if preset.startswith("cifar100") else "eval"
    for method in ("simclr", "mocov2plus", "byol", "barlow", "vicreg", "byol_gsg"):
        for reg in ("pnr", "cassle"):
            stream = {"regularizer.refresh_every": 100} if PRESETS[preset]["data"].get("scenario") == "stream" else {}
            cfg = build_config(preset, {"method": method, "regularizer": reg, **stream})
            assert cfg.regularizer.frozen_bn == expected, (method, reg)


@pytest.mark.parametrize("reg", ["pnr", "cassle"])
def test_frozen_bn_option_sets_the_frozen_model_mode_whatever_the_trainer_mode(reg):
    from fastpnr.methods import build_method
    from fastpnr.regularizers import build_regularizer

    for mode, want in (("eval", False), ("train", True)):
        cfg = build_config("smoke", {"method": "byol", "regularizer": reg, "regularizer.frozen_bn": mode,
                                     "method.proj_hidden": 16, "method.proj_out": 8, "method.pred_hidden": 8,
                                     "regularizer.distill_hidden": 8})
        method = build_method(cfg.method, cfg.model, num_classes=10)
        regularizer = build_regularizer(cfg.regularizer, method)
        regularizer.begin_task(method, 1)
        regularizer.train()
        assert all(m.training == want for m in regularizer.frozen.modules()), (reg, mode)
        assert regularizer.distill_predictor.training


def test_cifar_moco_pnr_trains_the_500_epochs_of_the_other_scripts():
    """cifar/mocov2plus_pnr.sh ships --max_epochs 1 (a debug leftover; its load_task0 twin has 500)."""
    for preset in ("cifar100-5t", "cifar100-10t"):
        assert {build_config(preset, {"method": m}).optim.epochs for m in ("mocov2plus", "simclr", "byol")} == {500}


def test_the_smoke_preset_sizes_every_methods_heads_for_its_width_16_backbone():
    """Issue 32: no method's heads or queue dwarf the backbone in smoke (feature dim 128), the CIFAR recipes kept."""
    from fastpnr.config import PRESETS
    from fastpnr.methods import METHODS

    for name in METHODS:
        cfg = build_config("smoke", {"method": name})
        m = cfg.method
        sizes = {k: getattr(m, k) for k in ("proj_hidden", "proj_out", "pred_hidden") if hasattr(m, k)}
        assert max(sizes.values()) <= 512 and cfg.model.width == 16 and cfg.data.image_size == 16, (name, sizes)
        assert getattr(m, "queue_size", 0) <= 4096 and cfg.regularizer.distill_hidden == 512
        cifar = PRESETS["cifar10-5t"]["per_method"].get(name, {}).get("optim", {})
        assert all(getattr(cfg.optim, k) == v for k, v in cifar.items()), name  # the scripts' lr, wd, ...
    assert build_config("smoke", {"method": "byol_gsg"}).data.train_fraction == 0.2  # 4 views per image
    assert build_config("smoke", {"method": "mocov2plus"}).method.queue_size == 4096
