"""SSL methods registry: name -> (Method class, config dataclass). A new method is one file plus one line."""
from .barlow import BarlowTwins
from .base import FrozenEncoder, Method
from .byol import BYOL
from ..method_configs import (BarlowConfig, BYOLConfig, BYOLGSGConfig, MethodConfig, MoCoV2PlusConfig, MoCoV3Config,
                                SimCLRConfig, SimSiamConfig, SimSiamGSGConfig, VICRegConfig)
from .gsg import BYOLGSG, SimSiamGSG
from .mocov2plus import MoCoV2Plus
from .mocov3 import MoCoV3
from .simclr import SimCLR
from .simsiam import SimSiam
from .vicreg import VICReg

METHODS = {
    "simclr": (SimCLR, SimCLRConfig),
    "mocov2plus": (MoCoV2Plus, MoCoV2PlusConfig),
    "mocov3": (MoCoV3, MoCoV3Config),
    "byol": (BYOL, BYOLConfig),
    "simsiam": (SimSiam, SimSiamConfig),
    "barlow": (BarlowTwins, BarlowConfig),
    "vicreg": (VICReg, VICRegConfig),
    "simsiam_gsg": (SimSiamGSG, SimSiamGSGConfig),
    "byol_gsg": (BYOLGSG, BYOLGSGConfig),
}


def build_method(cfg, model_cfg, num_classes: int) -> Method:
    return METHODS[cfg.name][0](cfg, model_cfg, num_classes)


__all__ = ["METHODS", "Method", "MethodConfig", "FrozenEncoder", "build_method"]
