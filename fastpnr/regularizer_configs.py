"""The continual strategies' configuration dataclasses, without torch: ``fastpnr train`` checks the command line,
preset and config file against them before it imports torch. ``fastpnr.regularizers`` pairs each with its Regularizer
class (REGULARIZERS)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import require

FROZEN_BN_MODES = ("eval", "train")
REPLAY_MODES = ("none", "er", "lump")
LUMP_FIRST_VIEWS = ("recipe", "plain")


@dataclass(frozen=True)
class RegularizerConfig:
    name: str = "finetune"                # continual strategy (a REGULARIZERS registry entry; set with --regularizer)
    replay: str = "none"                  # replay of a reservoir buffer: none, er (a buffer batch joins each batch), lump (views mixed with one)
    buffer_size: int = 256                # replay buffer: images kept (as dataset indices); 256 as UCL configs/*.yaml L12
    replay_batch: Optional[int] = None    # buffer images per step; None: optim.batch_size (UCL buffer.get_data(batch_size))
    mix_alpha: float = 0.4                # LUMP: mixing weight lambda ~ Beta(alpha, alpha), one per batch (UCL configs L29)
    lump_first_view: str = "recipe"       # LUMP's replayed first view: recipe (the run's view 1 recipe) or plain (the authors': crop 0.08-1, flip, normalize)
    refresh_every: Optional[int] = None   # stream (cassle, pnr, pfr): steps between refreshes of the frozen model

    def __post_init__(self):
        require(self.replay in REPLAY_MODES, "regularizer.replay", self.replay, REPLAY_MODES)
        require(isinstance(self.buffer_size, int) and self.buffer_size >= 1, "regularizer.buffer_size",
                self.buffer_size, "an int >= 1")
        require(self.replay_batch is None or self.replay_batch >= 1, "regularizer.replay_batch", self.replay_batch,
                "None (the batch size) or an int >= 1")
        require(self.mix_alpha > 0, "regularizer.mix_alpha", self.mix_alpha, "> 0")
        require(self.lump_first_view in LUMP_FIRST_VIEWS, "regularizer.lump_first_view", self.lump_first_view,
                LUMP_FIRST_VIEWS)
        require(self.lump_first_view == "recipe" or self.replay == "lump", "regularizer.lump_first_view",
                self.lump_first_view, f"recipe with regularizer.replay {self.replay} (plain is LUMP's)")
        require(self.refresh_every is None or (isinstance(self.refresh_every, int) and self.refresh_every >= 1),
                "regularizer.refresh_every", self.refresh_every, "None or an integer >= 1 (steps)")


@dataclass(frozen=True)
class FrozenModelConfig(RegularizerConfig):
    frozen_bn: str = "eval"   # frozen model's BN: eval as the PNR repo (PNR and CaSSLe); train: original CaSSLe, PNR CIFAR
    distill_hidden: int = 2048            # hidden width of the distillation predictor

    def __post_init__(self):
        super().__post_init__()
        require(self.frozen_bn in FROZEN_BN_MODES, "regularizer.frozen_bn", self.frozen_bn, FROZEN_BN_MODES)
        require(self.distill_hidden >= 1, "regularizer.distill_hidden", self.distill_hidden, ">= 1")


@dataclass(frozen=True)
class CaSSLeConfig(FrozenModelConfig):
    name: str = "cassle"
    weight: Optional[float] = None         # lambda ("distill_lamb"); None: 1, VICReg 25
    distill_temperature: float = 0.2      # temperature of the contrastive distiller
    barlow_lamb: float = 5e-3             # off-diagonal weight of the decorrelative (Barlow) distiller
    barlow_scale: float = 0.1             # scale of the decorrelative distiller's loss

    def __post_init__(self):
        super().__post_init__()
        require(self.weight is None or self.weight >= 0, "regularizer.weight", self.weight, "None or >= 0")
        require(self.distill_temperature > 0, "regularizer.distill_temperature", self.distill_temperature, "> 0")


@dataclass(frozen=True)
class PFRConfig(RegularizerConfig):
    name: str = "pfr"
    weight: float = 1.0                   # lambda ("--distill_lamb", default 1: CVPR_PFR cassle/distillers/pfr.py L42)
    frozen_bn: str = "train"              # frozen backbone BN mode: train (the authors never call .eval()) or eval
    projector_hidden: Optional[int] = None  # hidden width of the temporal projector h; None: d/2 (pfr.py L26-31)

    def __post_init__(self):
        super().__post_init__()
        require(self.weight >= 0, "regularizer.weight", self.weight, ">= 0")
        require(self.frozen_bn in FROZEN_BN_MODES, "regularizer.frozen_bn", self.frozen_bn, FROZEN_BN_MODES)
        require(self.projector_hidden is None or self.projector_hidden >= 1, "regularizer.projector_hidden",
                self.projector_hidden, "None or >= 1")


@dataclass(frozen=True)
class PNRConfig(FrozenModelConfig):
    name: str = "pnr"
    distill_temperature: float = 0.2        # SimCLR-/MoCo-PNR tau_d
    pos_weight: Optional[float] = None      # lambda_d ("distill_lamb"); None: the method's default
    neg_weight: Optional[float] = None      # lambda_n ("negative_lamb"); None: the method's default
    barlow_lamb: float = 5e-3               # Barlow-PNR positive term
    barlow_scale: float = 0.1             # Barlow-PNR scale of the loss
    frozen_queue_size: Optional[int] = None # MoCo-PNR second queue; None: the method's queue size

    def __post_init__(self):
        super().__post_init__()
        require(self.distill_temperature > 0, "regularizer.distill_temperature", self.distill_temperature, "> 0")
        for name in ("pos_weight", "neg_weight"):
            v = getattr(self, name)
            require(v is None or v >= 0, f"regularizer.{name}", v, "None or >= 0")
        require(self.frozen_queue_size is None or self.frozen_queue_size >= 1, "regularizer.frozen_queue_size",
                self.frozen_queue_size, "None or >= 1")


@dataclass(frozen=True)
class POCONConfig(RegularizerConfig):
    name: str = "pocon"
    expert_epochs: Optional[int] = None     # phase 1 (expert) epochs per task; None: optim.epochs (nepochs 500, src/tests/wacv.py L76)
    main_epochs: Optional[int] = None       # phase 2 (main network) epochs, tasks >= 1; None: optim.epochs // 2, at least 1 (ret_nepochs 250, wacv.py L76)
    main_epochs_task0: Optional[int] = None  # phase 2 epochs of task 0; None: optim.epochs (task1_Retnepochs 500, wacv.py L76)
    expert_weight: float = 1.0              # lambda_exp (--lambdaExp default 1.0: copyOPscratch.py L315)
    retro_weight: float = 25.0              # lambda_ret (--lambdapRet 25: wacv.py L76)

    def __post_init__(self):
        super().__post_init__()
        for field in ("expert_epochs", "main_epochs", "main_epochs_task0"):
            value = getattr(self, field)
            require(value is None or (isinstance(value, int) and value >= 1), f"regularizer.{field}", value,
                    "None (the default) or an int >= 1: both POCON phases need epochs")
        for field in ("expert_weight", "retro_weight"):
            require(getattr(self, field) >= 0, f"regularizer.{field}", getattr(self, field), ">= 0")


@dataclass(frozen=True)
class ERConfig(RegularizerConfig):
    name: str = "er"
    replay: str = "er"                    # er: a buffer batch joins each batch (set by --regularizer er)

    def __post_init__(self):
        super().__post_init__()
        require(self.replay == "er", "regularizer.replay", self.replay, "er with --regularizer er (lump: --regularizer lump)")


@dataclass(frozen=True)
class LUMPConfig(RegularizerConfig):
    name: str = "lump"
    replay: str = "lump"                  # lump: each view mixed with a buffer batch's (set by --regularizer lump)

    def __post_init__(self):
        super().__post_init__()
        require(self.replay == "lump", "regularizer.replay", self.replay, "lump with --regularizer lump (er: --regularizer er)")


# CLA (regularizers/cla.py): online, task-free streams
CLA_WEIGHT = 0.1          # omega: the authors' strategies' default (docs/FIDELITY.md)
CLA_EMA_MOMENTUM = 0.999  # m of CLA-E's EMA: the authors' default (docs/FIDELITY.md)
# ssl: the method's own loss (the authors' classes' default); cosine: -cos row by row (their command line's default)
CLA_CRITERIA = ("ssl", "cosine")
CLA_STORED = ("first", "mean")  # CLA-R's stored projection: the first view's, or the views' mean (the authors')


def _check_cla_criterion(criterion) -> None:
    require(criterion in CLA_CRITERIA, "regularizer.align_criterion", criterion, CLA_CRITERIA)


@dataclass(frozen=True)
class CLAEConfig(CaSSLeConfig):
    name: str = "cla_e"
    weight: Optional[float] = CLA_WEIGHT  # omega, the alignment loss's weight
    ema_momentum: float = CLA_EMA_MOMENTUM  # m: the past model theta' <- m theta' + (1 - m) theta after each step
    align_criterion: str = "ssl"          # ssl: the method's own loss in CaSSLe's form; cosine: -cos row by row

    def __post_init__(self):
        super().__post_init__()
        require(isinstance(self.ema_momentum, (int, float)) and 0 < self.ema_momentum < 1,
                "regularizer.ema_momentum", self.ema_momentum, "0 < momentum < 1")
        _check_cla_criterion(self.align_criterion)


@dataclass(frozen=True)
class CLARConfig(RegularizerConfig):
    name: str = "cla_r"
    replay: str = "er"                    # CLA-R replays as ER does (a buffer batch joins each batch)
    weight: float = CLA_WEIGHT            # omega, the alignment loss's weight
    distill_hidden: int = 2048            # hidden width of the predictor g
    distill_temperature: float = 0.2      # temperature of the contrastive alignment (SimCLR, MoCo)
    barlow_lamb: float = 5e-3             # off-diagonal weight of the decorrelative alignment (Barlow)
    barlow_scale: float = 0.1             # scale of the decorrelative alignment
    align_criterion: str = "ssl"          # ssl: the method's own loss in CaSSLe's form; cosine: -cos row by row
    stored_projection: str = "first"      # stored when an image enters: the first view's projection, or the views' mean
    stored_refresh: float = 1.0           # alpha: at each replay stored <- alpha stored + (1 - alpha) current (1: never)

    def __post_init__(self):
        super().__post_init__()
        require(self.replay == "er", "regularizer.replay", self.replay, "er with --regularizer cla_r")
        _check_cla_criterion(self.align_criterion)
        require(self.stored_projection in CLA_STORED, "regularizer.stored_projection", self.stored_projection, CLA_STORED)
        require(isinstance(self.stored_refresh, (int, float)) and 0 <= self.stored_refresh <= 1,
                "regularizer.stored_refresh", self.stored_refresh, "0 <= alpha <= 1")
        require(self.weight >= 0, "regularizer.weight", self.weight, ">= 0")
        require(self.distill_hidden >= 1, "regularizer.distill_hidden", self.distill_hidden, ">= 1")
        require(self.distill_temperature > 0, "regularizer.distill_temperature", self.distill_temperature, "> 0")


REGULARIZER_CONFIGS = {
    "finetune": RegularizerConfig,
    "pnr": PNRConfig,
    "cassle": CaSSLeConfig,
    "pfr": PFRConfig,
    "er": ERConfig,
    "lump": LUMPConfig,
    "pocon": POCONConfig,
    "cla_e": CLAEConfig,
    "cla_r": CLARConfig,
}
