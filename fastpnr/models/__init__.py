from .backbones import BACKBONES, backbone_from_config, is_vit
from .heads import mlp
from .resnet import ResNet, build_backbone
from .vit import VITS, VisionTransformer, build_vit

__all__ = ["BACKBONES", "ResNet", "VITS", "VisionTransformer", "backbone_from_config", "build_backbone", "build_vit",
           "is_vit", "mlp"]
