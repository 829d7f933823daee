"""Continual strategies registry: name -> (Regularizer class, config dataclass)."""
from .base import DistillRegularizer, FrozenModelRegularizer, Regularizer
from .cassle import CaSSLe
from .cla import CLAE, CLAR
from ..regularizer_configs import (CaSSLeConfig, CLAEConfig, CLARConfig, ERConfig, LUMPConfig, PFRConfig, PNRConfig,
                                  POCONConfig, RegularizerConfig)
from .pfr import PFR
from .pnr import PNR
from .pocon import POCON

REGULARIZERS = {
    "finetune": (Regularizer, RegularizerConfig),
    "pnr": (PNR, PNRConfig),
    "cassle": (CaSSLe, CaSSLeConfig),
    "pfr": (PFR, PFRConfig),
    "er": (Regularizer, ERConfig),
    "lump": (Regularizer, LUMPConfig),
    "pocon": (POCON, POCONConfig),
    "cla_e": (CLAE, CLAEConfig),  # online, task-free (data.scenario stream): cla.py
    "cla_r": (CLAR, CLARConfig),
}


def build_regularizer(cfg, method) -> Regularizer:
    return REGULARIZERS[cfg.name][0](cfg, method)


def task_phases(cfg, task: int, epochs: int) -> list[tuple[str, int]]:
    """(name, epochs) of task ``task``'s training phases under regularizer config ``cfg`` (``epochs``: optim.epochs)."""
    return REGULARIZERS[cfg.name][0].phases(cfg, task, epochs)


def task_epochs(cfg, task: int, epochs: int) -> int:
    """Task ``task``'s epochs over all its phases."""
    return sum(n for _, n in task_phases(cfg, task, epochs))


__all__ = ["REGULARIZERS", "Regularizer", "RegularizerConfig", "FrozenModelRegularizer", "DistillRegularizer",
           "PNR", "CaSSLe", "PFR", "POCON", "build_regularizer", "task_phases",
           "task_epochs"]
