"""Backbones (torchvision layout, the anchors' CIFAR stem) and method mechanics: heads, EMA, queue."""
from __future__ import annotations

import math

import torch

from fastpnr.config import ModelConfig
from fastpnr.methods import METHODS, build_method
from fastpnr.models import build_backbone


def test_resnet_sizes_match_torchvision_layouts():
    r18 = build_backbone("resnet18")
    assert sum(p.numel() for p in r18.parameters()) == 11_689_512 - 513_000  # torchvision resnet18 minus fc
    r50 = build_backbone("resnet50")
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032 - 2_049_000
    assert r18.feat_dim == 512 and r50.feat_dim == 2048


def test_cifar_stem_padding_two_gives_34_17_9_5():
    net = build_backbone("resnet18", cifar_stem=True, stem_padding=2)
    sizes = []
    x = net.maxpool(net.relu(net.bn1(net.conv1(torch.randn(2, 3, 32, 32)))))
    sizes.append(x.shape[-1])
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        sizes.append(x.shape[-1])
    assert sizes == [34, 34, 17, 9, 5]


def test_width_scales_every_layer_and_checkpoint_configs_rebuild_it():
    from fastpnr.config import build_config, config_from_dict

    net = build_backbone("resnet18", cifar_stem=True, width=20)
    assert [net.conv1.out_channels] + [layer[-1].bn2.num_features for layer in (net.layer1, net.layer2, net.layer3,
                                                                             net.layer4)] == [20, 20, 40, 80, 160]
    assert net.feat_dim == 160 and net(torch.randn(2, 3, 16, 16)).shape == (2, 160)
    assert build_backbone("resnet50", width=8).feat_dim == 8 * 8 * 4
    # A checkpoint stores cfg.to_dict(); loading rebuilds that width (an old config without the key gets 64).
    cfg = build_config("smoke", {"model.width": 12, "method.proj_hidden": 16, "method.proj_out": 8})
    saved = build_method(cfg.method, cfg.model, 10).state_dict()
    loaded = config_from_dict(cfg.to_dict())
    assert loaded.model.width == 12
    build_method(loaded.method, loaded.model, 10).load_state_dict(saved)  # shapes match: no error
    old = cfg.to_dict()
    del old["model"]["width"]
    assert config_from_dict(old).model.width == 64


def _small(name, **kw):
    cfg_cls = METHODS[name][1]
    extra = {"proj_hidden": 32, "proj_out": 16, **kw}
    if "pred_hidden" in {f for f in cfg_cls.__dataclass_fields__}:
        extra["pred_hidden"] = 16
    if name == "mocov2plus":
        extra["queue_size"] = 40
    return build_method(cfg_cls(name=name, **extra), ModelConfig(), num_classes=10)


def test_every_method_forward_loss_and_backward():
    for name in METHODS:
        torch.manual_seed(0)
        m = _small(name)
        views = [torch.randn(6, 3, 16, 16) for _ in range(m.num_views)]
        out = m.forward_views(views)
        loss, logs = m.ssl_loss(out)
        assert loss.ndim == 0 and torch.isfinite(loss), name
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters()), name


def test_moco_queue_is_a_ring_buffer_without_host_sync():
    m = _small("mocov2plus")
    keys = [torch.nn.functional.normalize(torch.randn(16, 16), dim=1) for _ in range(2)]
    for _ in range(3):  # 48 rows into a 40-row queue: wraps around
        m.end_of_step({"k": keys})
    assert int(m.queue_ptr) == 48 % 40
    assert torch.equal(m.queue[0, 8:16], keys[0][8:16])   # third write covered rows 32..39 and 0..7
    assert torch.equal(m.queue[1, 0:8], keys[1][8:16])


def test_cifar_stem_keeps_the_default_conv_init_the_rest_kaiming_normal():
    """The anchors replace conv1 after torchvision's init: the CIFAR stem has nn.Conv2d's default init,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = 3*3*3; the other convolutions kaiming-normal (fan_out)."""
    torch.manual_seed(0)
    net = build_backbone("resnet18", cifar_stem=True)
    w = net.conv1.weight.detach()
    bound = 1 / math.sqrt(3 * 3 * 3)
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound     # fills the uniform range, never beyond
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)
    inner = net.layer1[0].conv1.weight.detach()                          # 64 -> 64, 3x3: fan_out 576
    assert abs(inner.std().item() - math.sqrt(2 / 576)) < 0.05 * math.sqrt(2 / 576)
    torch.manual_seed(0)
    imagenet_stem = build_backbone("resnet18", cifar_stem=False).conv1.weight.detach()  # 7x7, torchvision's init
    assert abs(imagenet_stem.std().item() - math.sqrt(2 / (64 * 49))) < 0.05 * math.sqrt(2 / (64 * 49))
