"""Every backbone by name (ResNets and ViTs) and the one builder a method calls with its ``model`` config."""
from __future__ import annotations

from torch import nn

from ..errors import require
from .resnet import BACKBONES as RESNETS
from .resnet import build_backbone as build_resnet
from .vit import VITS, build_vit

BACKBONES = sorted({*RESNETS, *VITS})


def is_vit(name: str) -> bool:
    return name in VITS


def backbone_from_config(model_cfg) -> nn.Module:
    """The backbone ``model_cfg`` (a ``config.ModelConfig``) describes; a ViT takes its input size from
    ``model.image_size``, which the configuration resolves from the data section."""
    name = model_cfg.backbone
    require(name in BACKBONES, "model.backbone", name, BACKBONES)
    if is_vit(name):
        return build_vit(name, model_cfg.patch_size, model_cfg.image_size, pos_embed=model_cfg.pos_embed,
                         drop_path=model_cfg.drop_path, freeze_patch_embed=model_cfg.freeze_patch_embed, depth=model_cfg.depth)
    return build_resnet(name, cifar_stem=model_cfg.cifar_stem, stem_padding=model_cfg.stem_padding,
                        zero_init_residual=model_cfg.zero_init_residual, width=model_cfg.width)
