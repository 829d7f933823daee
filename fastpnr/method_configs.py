"""The methods' configuration dataclasses, without torch: ``fastpnr train`` checks the command line, preset and
config file against them before it imports torch. ``fastpnr.methods`` pairs each with its Method class (METHODS)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import require

LOSS_BACKENDS = ("auto", "torch", "triton")


def check_tau(cfg) -> None:
    require(0 <= cfg.base_tau <= 1, "method.base_tau", cfg.base_tau, "0 <= tau <= 1")
    require(cfg.base_tau <= cfg.final_tau <= 1, "method.final_tau", cfg.final_tau, f"base_tau ({cfg.base_tau}) <= tau <= 1")


@dataclass(frozen=True)
class MethodConfig:
    name: str = ""                        # SSL method (a METHODS registry entry; set with --method)
    proj_hidden: int = 2048               # projector hidden width
    proj_out: int = 128                   # projector output width

    def __post_init__(self):
        require(self.proj_hidden >= 1, "method.proj_hidden", self.proj_hidden, ">= 1")
        require(self.proj_out >= 1, "method.proj_out", self.proj_out, ">= 1")


@dataclass(frozen=True)
class SimCLRConfig(MethodConfig):
    temperature: float = 0.2              # InfoNCE temperature
    loss_backend: str = "auto"    # auto: the fused Triton InfoNCE kernel on CUDA, the PyTorch reference elsewhere

    def __post_init__(self):
        super().__post_init__()
        require(self.temperature > 0, "method.temperature", self.temperature, "> 0")
        require(self.loss_backend in LOSS_BACKENDS, "method.loss_backend", self.loss_backend, LOSS_BACKENDS)


@dataclass(frozen=True)
class MoCoV2PlusConfig(MethodConfig):
    temperature: float = 0.2              # InfoNCE temperature
    queue_size: int = 65536               # negative keys kept per view in the queue
    base_tau: float = 0.99                # EMA momentum of the key encoder at the start (cosine schedule)
    final_tau: float = 0.999              # EMA momentum at the end of the schedule
    loss_backend: str = "auto"    # auto: the fused Triton InfoNCE kernel on CUDA, the PyTorch reference elsewhere
    momentum_classifier: bool = True  # also probe the EMA backbone (anchors' --momentum_classifier), with the online probe

    def __post_init__(self):
        super().__post_init__()
        require(self.temperature > 0, "method.temperature", self.temperature, "> 0")
        require(self.loss_backend in LOSS_BACKENDS, "method.loss_backend", self.loss_backend, LOSS_BACKENDS)
        require(self.queue_size >= 1, "method.queue_size", self.queue_size, ">= 1")
        check_tau(self)


@dataclass(frozen=True)
class BYOLConfig(MethodConfig):
    proj_hidden: int = 4096
    proj_out: int = 256
    pred_hidden: int = 4096               # predictor hidden width
    predictor: bool = True                # false: the predictor is the identity (p = z; GSG's no-predictor ablation)
    base_tau: float = 0.99                # EMA momentum of the target network at the start (cosine schedule)
    final_tau: float = 1.0                # EMA momentum at the end of the schedule
    momentum_classifier: bool = True  # also probe the EMA backbone (anchors' --momentum_classifier), with the online probe

    def __post_init__(self):
        super().__post_init__()
        check_tau(self)


@dataclass(frozen=True)
class SimSiamConfig(MethodConfig):
    proj_hidden: int = 2048
    proj_out: int = 2048
    pred_hidden: int = 512                # predictor bottleneck width
    fix_pred_lr: bool = True     # the predictor keeps a constant lr (SimSiam paper, GSG --fix-pred-lr)
    predictor: bool = True                # false: the predictor is the identity (p = z; GSG's no-predictor ablation)


@dataclass(frozen=True)
class BarlowConfig(MethodConfig):
    proj_hidden: int = 2048
    proj_out: int = 2048
    lamb: float = 5e-3                    # weight of the off-diagonal (redundancy) terms
    scale: float = 0.1                    # scale of the whole loss (solo-learn's scale_loss)

    def __post_init__(self):
        super().__post_init__()
        require(self.lamb >= 0, "method.lamb", self.lamb, ">= 0")
        require(self.scale > 0, "method.scale", self.scale, "> 0")


@dataclass(frozen=True)
class VICRegConfig(MethodConfig):
    proj_hidden: int = 2048
    proj_out: int = 2048
    sim_weight: float = 25.0              # weight of the invariance (MSE) term
    var_weight: float = 25.0              # weight of the variance term
    cov_weight: float = 1.0               # weight of the covariance term

    def __post_init__(self):
        super().__post_init__()
        for name in ("sim_weight", "var_weight", "cov_weight"):
            require(getattr(self, name) >= 0, f"method.{name}", getattr(self, name), ">= 0")


@dataclass(frozen=True)
class SimSiamGSGConfig(SimSiamConfig):
    """SimSiam's heads and predictor-lr rule (the anchor's ``--fix-pred-lr``): 2048-2048-2048 projector, 512 bottleneck."""


@dataclass(frozen=True)
class BYOLGSGConfig(SimSiamGSGConfig):
    """SimSiam-style heads plus an EMA target; the anchor's momentum is a constant 0.99 (no tau schedule)."""

    base_tau: float = 0.99                # EMA momentum of the target network (constant in the anchor)
    final_tau: float = 0.99               # EMA momentum at the end (equal to base_tau: no schedule)

    def __post_init__(self):
        super().__post_init__()
        check_tau(self)


@dataclass(frozen=True)
class MoCoV3Config(MethodConfig):
    proj_hidden: int = 4096               # hidden width of projector and predictor (--moco-mlp-dim)
    proj_out: int = 256                   # output width of projector and predictor (--moco-dim)
    pred_hidden: int = 4096               # predictor hidden width
    proj_layers: Optional[int] = None     # projector Linear layers; None: 3 on a ViT, 2 on a ResNet (the paper's)
    temperature: float = 0.2              # t of the loss (ViT: 0.2; the paper's ResNet-50: 1.0)
    base_tau: float = 0.99                # EMA momentum at the start of a task (cosine schedule)
    final_tau: float = 1.0                # EMA momentum at the end
    loss_backend: str = "auto"            # auto: the fused Triton InfoNCE kernel on CUDA, the PyTorch reference elsewhere

    def __post_init__(self):
        super().__post_init__()
        require(self.pred_hidden >= 1, "method.pred_hidden", self.pred_hidden, ">= 1")
        require(self.proj_layers is None or self.proj_layers >= 2, "method.proj_layers", self.proj_layers,
                "None (3 on a ViT, 2 on a ResNet) or an integer >= 2")
        require(self.temperature > 0, "method.temperature", self.temperature, "> 0")
        require(self.loss_backend in LOSS_BACKENDS, "method.loss_backend", self.loss_backend, LOSS_BACKENDS)
        check_tau(self)


METHOD_CONFIGS = {
    "simclr": SimCLRConfig,
    "mocov2plus": MoCoV2PlusConfig,
    "mocov3": MoCoV3Config,
    "byol": BYOLConfig,
    "simsiam": SimSiamConfig,
    "barlow": BarlowConfig,
    "vicreg": VICRegConfig,
    "simsiam_gsg": SimSiamGSGConfig,
    "byol_gsg": BYOLGSGConfig,
}
