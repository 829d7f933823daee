"""SSL methods registry: name -> (Method class, config dataclass). A new method is one file plus one line."""
from .barlow import BarlowConfig, BarlowTwins
from .base import FrozenEncoder, Method, MethodConfig
from .byol import BYOL, BYOLConfig
from .gsg import BYOLGSG, BYOLGSGConfig, SimSiamGSG, SimSiamGSGConfig
from .mocov2plus import MoCoV2Plus, MoCoV2PlusConfig
from .simclr import SimCLR, SimCLRConfig
from .simsiam import SimSiam, SimSiamConfig
from .vicreg import VICReg, VICRegConfig

METHODS = {
    "simclr": (SimCLR, SimCLRConfig),
    "mocov2plus": (MoCoV2Plus, MoCoV2PlusConfig),
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
