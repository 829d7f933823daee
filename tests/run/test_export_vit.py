"""`fastpnr export` / `fastpnr.load_backbone` of a ViT run: timm's key layout, the same features; timm where installed."""
from __future__ import annotations

import pytest
import torch

import fastpnr
from fastpnr import cli
from fastpnr.run.export import export_backbone
from tests.models.test_vit import timm_table
from tests.run.test_export import features64, model_file, run_backbone

VIT = {"backbone": "vit_tiny", "patch_size": 8, "pos_embed": "sincos"}  # at the smoke preset's 16 px


def test_vit_export_has_timms_keys_and_the_same_features(tmp_path, capsys):
    path = model_file(tmp_path, **VIT)
    cli.main(["export", "--checkpoint", path, "--out", str(tmp_path / "b.pt")])
    assert "timm.create_model('vit_tiny_patch16_224', img_size=16, patch_size=8, num_classes=0)" in capsys.readouterr().out
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in saved["state_dict"].items()} == timm_table(192, 12, 8, 16)
    assert (saved["layout"], saved["timm_name"], saved["patch_size"], saved["image_size"], saved["feat_dim"]) == \
        ("timm", "vit_tiny_patch16_224", 8, 16, 192)
    loaded, reference = fastpnr.load_backbone(tmp_path / "b.pt"), run_backbone(path)
    assert not loaded.training and loaded.export_info["pos_embed"] == "sincos"
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(features64(loaded, x), features64(reference, x), rtol=1e-12, atol=1e-12)


def test_timm_vit_loads_the_export_and_gives_the_same_features(tmp_path):
    timm = pytest.importorskip("timm", reason="timm not installed (optional)")
    meta = export_backbone(model_file(tmp_path, **VIT), tmp_path / "b.pt")
    model = timm.create_model(meta["timm_name"], pretrained=False, img_size=meta["image_size"],
                              patch_size=meta["patch_size"], num_classes=0)
    model.load_state_dict(torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"])  # strict
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(features64(model.eval(), x), features64(fastpnr.load_backbone(tmp_path / "b.pt"), x),
                          rtol=1e-10, atol=1e-10)
