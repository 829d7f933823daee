"""`fastpnr export` / `fastpnr.load_backbone`: the backbone in torchvision's ResNet key layout, the same features
in a fresh fastpnr ResNet and (where installed) in torchvision's and timm's ResNets; bad files are one line."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastpnr
from fastpnr import cli
from fastpnr.config import build_config, config_from_dict
from fastpnr.train.continual import ContinualRun
from fastpnr.errors import DataError
from fastpnr.run.export import FORMAT, export_backbone
from fastpnr.methods import build_method
from tests.conftest import tiny_overrides

BLOCKS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_keys(arch: str) -> set[str]:
    """torchvision.models.resnet's state_dict keys without fc, written out from its documented structure: conv1, bn1,
    layer1-4 of BasicBlocks (conv1, bn1, conv2, bn2) or Bottlenecks (+ conv3, bn3), a downsample (0: conv, 1: BN) on
    the first block of a layer whose stride or width changes."""
    kind, counts = BLOCKS[arch]
    convs = 2 if kind == "basic" else 3
    keys = {"conv1.weight", *(f"bn1.{s}" for s in BN)}
    for layer, n in enumerate(counts, 1):
        for b in range(n):
            pre = f"layer{layer}.{b}."
            for c in range(1, convs + 1):
                keys |= {pre + f"conv{c}.weight", *(pre + f"bn{c}.{s}" for s in BN)}
            if b == 0 and (layer > 1 or kind == "bottleneck"):
                keys |= {pre + "downsample.0.weight", *(pre + f"downsample.1.{s}" for s in BN)}
    return keys


def quiet(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def tiny_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = build_config("smoke", tiny_overrides(data_root, **{"regularizer.distill_hidden": 32}))
    ContinualRun(cfg, out, log=quiet).fit()
    return out


def run_backbone(model_file) -> nn.Module:
    """The backbone as the run built it, from the model file (contiguous memory format, eval mode)."""
    saved = torch.load(model_file, map_location="cpu", weights_only=False)
    cfg = config_from_dict(saved["config"])
    method = build_method(cfg.method, cfg.model, num_classes=10)
    method.load_state_dict(saved["method"])
    return method.backbone.eval()


def model_file(tmp_path, **model) -> str:
    """A task{t}.pt-shaped file ({config, task, method}) of an untrained method of the given model settings, its BN
    running statistics moved off their init so that they matter."""
    cfg = build_config("smoke", {**{f"model.{k}": v for k, v in model.items()}, "method.proj_hidden": 32})
    method = build_method(cfg.method, cfg.model, num_classes=10)
    g = torch.Generator().manual_seed(0)
    for m in method.backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    path = tmp_path / "task0.pt"
    torch.save({"config": cfg.to_dict(), "task": 0, "method": method.state_dict()}, path)
    return str(path)


def features64(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Features of a float64 copy of ``model`` (rounding ~1e-16: two equal networks agree far below 1e-10)."""
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double())


def test_export_writes_torchvision_keys_and_the_same_features(tiny_run, tmp_path):
    exported = export_backbone(tiny_run / "task1.pt", tmp_path / "backbone.pt")
    saved = torch.load(tmp_path / "backbone.pt", map_location="cpu", weights_only=True)  # plain tensors and values
    assert saved["format"] == FORMAT and set(saved["state_dict"]) == torchvision_keys("resnet18")
    assert (saved["arch"], saved["width"], saved["stem"], saved["stem_padding"], saved["feat_dim"]) == \
        ("resnet18", 16, "cifar", 2, 128)
    assert exported["source"]["task"] == 1 and exported["normalize"]["mean"] == [0.4914, 0.4822, 0.4465]
    loaded, reference = fastpnr.load_backbone(tmp_path / "backbone.pt"), run_backbone(tiny_run / "task1.pt")
    assert not loaded.training and loaded.export_info["stem"] == "cifar"
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))  # same module, weights, input and ops
    assert torch.allclose(features64(loaded, x), features64(reference, x), rtol=1e-12, atol=1e-12)
    # a task file loads directly too, and differs from the other task's model
    direct = fastpnr.load_backbone(tiny_run / "task1.pt")
    with torch.no_grad():
        assert torch.equal(direct(x), reference(x)) and not torch.equal(fastpnr.load_backbone(tiny_run / "task0.pt")(x),
                                                                        reference(x))


def test_checkpoint_pt_is_accepted_and_says_where_the_run_stood(tiny_run, tmp_path, capsys):
    cli.main(["export", str(tiny_run / "checkpoint.pt"), "--out", str(tmp_path / "b.pt")])
    out = capsys.readouterr().out
    assert "the model after task 1 (checkpoint.pt)" in out and "export task{t}.pt" in out and "CIFAR stem" in out
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # the finished run's checkpoint holds the model after the last task
        assert torch.equal(fastpnr.load_backbone(tmp_path / "b.pt")(x), run_backbone(tiny_run / "task1.pt")(x))


def test_describe_source_says_where_a_checkpoint_stood():
    from fastpnr.run.export import describe_source

    def at(next_task, next_epoch, phase):
        return describe_source({"source": {"task": {"next_task": next_task, "next_epoch": next_epoch, "phase": phase}}})
    assert at(0, 0, "train").startswith("the untrained model")
    assert at(1, 3, "train").startswith("checkpoint.pt in the middle of task 1 (3 of its epochs done)")
    assert at(1, 5, "evaluate").startswith("the model after task 1 (checkpoint.pt written before")
    assert describe_source({"source": {"task": 0}}) == "the model after task 0"


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_key_layout_of_both_architectures(tmp_path, arch):
    meta = export_backbone(model_file(tmp_path, backbone=arch, width=8, cifar_stem=False), tmp_path / "b.pt")
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert set(saved["state_dict"]) == torchvision_keys(arch) and meta["stem"] == "imagenet"
    assert all(t.is_contiguous() for t in saved["state_dict"].values())


def _bad_files(tmp_path, tiny_run):
    (tmp_path / "notes.pt").write_text("not a model")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    data = (tiny_run / "task1.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    export_backbone(tiny_run / "task1.pt", tmp_path / "exported.pt")
    return {"notes.pt": "is not a PyTorch file fastpnr can read", "tensor.pt": "holds a Tensor, not a fastpnr model",
            "other.pt": "is not a fastpnr model (no 'method' and 'config' entries; it holds state_dict)",
            "truncated.pt": "is not a PyTorch file fastpnr can read", "exported.pt": "is already an exported backbone",
            "missing.pt": "no such file", ".": "is a folder"}


def test_bad_files_are_one_line_naming_the_file_and_what_to_give(tiny_run, tmp_path, capsys):
    for name, expected in _bad_files(tmp_path, tiny_run).items():
        path = tmp_path / name
        with pytest.raises(DataError) as e:
            export_backbone(path, tmp_path / "out.pt")
        msg = str(e.value)
        assert expected in msg and "\n" not in msg, (name, msg)
        if name != "exported.pt":
            assert "task{t}.pt" in msg, msg
    with pytest.raises(SystemExit) as e:
        cli.main(["export", str(tmp_path / "notes.pt"), "--out", str(tmp_path / "out.pt")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def _other_resnet(model, stem_padding):
    """conv1 and maxpool swapped for the CIFAR stem, fc dropped: what the README says to do."""
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=stem_padding, bias=False)
    model.maxpool = nn.Identity()
    return model


@pytest.mark.parametrize("cifar_stem", [True, False], ids=["cifar-stem", "imagenet-stem"])
def test_torchvision_resnet18_loads_the_export_and_gives_the_same_features(tmp_path, cifar_stem):
    torchvision = pytest.importorskip("torchvision", reason="torchvision not installed (optional)")
    export_backbone(model_file(tmp_path, width=64, cifar_stem=cifar_stem), tmp_path / "b.pt")
    ckpt = torch.load(tmp_path / "b.pt", weights_only=True)
    model = torchvision.models.resnet18(weights=None)
    if ckpt["stem"] == "cifar":
        _other_resnet(model, ckpt["stem_padding"])
    model.fc = nn.Identity()
    model.load_state_dict(ckpt["state_dict"])  # strict: every key matches
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ours = fastpnr.load_backbone(tmp_path / "b.pt")
    assert torch.allclose(features64(model.eval(), x), features64(ours, x), rtol=1e-10, atol=1e-10)


def test_timm_resnet18_loads_the_export_and_gives_the_same_features(tmp_path):
    timm = pytest.importorskip("timm", reason="timm not installed (optional)")
    export_backbone(model_file(tmp_path, width=64, cifar_stem=True), tmp_path / "b.pt")
    ckpt = torch.load(tmp_path / "b.pt", weights_only=True)
    model = _other_resnet(timm.create_model("resnet18", pretrained=False, num_classes=0), ckpt["stem_padding"])
    model.load_state_dict(ckpt["state_dict"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ours = fastpnr.load_backbone(tmp_path / "b.pt")
    assert torch.allclose(features64(model.eval(), x), features64(ours, x), rtol=1e-10, atol=1e-10)
