"""Continual strategies registry: name -> (Regularizer class, config dataclass)."""
from .base import FrozenModelRegularizer, Regularizer, RegularizerConfig

REGULARIZERS = {
    "finetune": (Regularizer, RegularizerConfig),
}


def build_regularizer(cfg, method) -> Regularizer:
    return REGULARIZERS[cfg.name][0](cfg, method)


__all__ = ["REGULARIZERS", "Regularizer", "RegularizerConfig", "FrozenModelRegularizer", "build_regularizer"]
