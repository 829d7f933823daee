from .heads import mlp
from .resnet import BACKBONES, ResNet, build_backbone

__all__ = ["BACKBONES", "ResNet", "build_backbone", "mlp"]
