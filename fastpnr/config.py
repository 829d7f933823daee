"""Run configuration: one frozen, validated dataclass per concern, named presets, dotted overrides.

``build_config(preset, overrides)`` resolves a run: defaults <- preset <- the preset's per-method block
(``per_method[<method>]``, the anchors' per-method learning rates etc.) <- overrides such as
``{"optim.lr": 0.1, "method": "byol"}``. An unknown key, a value of the wrong type or out of range fails at
once with one line naming the field, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from .errors import ConfigError, require

PRECISIONS = ("auto", "bf16", "fp16", "fp32", "fp64")  # auto: fastpnr.system.precision.resolve_precision
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision
COMPILE_MODES = ("off", "default", "max-autotune-no-cudagraphs")  # torch.compile modes; the step has its own graph
CUDA_GRAPH_MODES = ("auto", "true", "false")  # auto: capture on CUDA, eager elsewhere without a word
# fastpnr.models.BACKBONES' keys (that module needs torch; a test keeps them equal)
BACKBONE_NAMES = ("resnet18", "resnet50", "vit_tiny", "vit_small", "vit_base")
SCENARIOS = ("class", "data", "domain", "stream")  # stream: data.stream_of cut into chunks
STREAM_OF = ("class", "data", "domain")
BOUNDARIES = ("unknown", "known")
PROTOCOLS = ("linear", "knn", "online", "official")
OPTIMIZERS = ("lars", "sgd", "adamw")
PROBES = ("full", "task", "off")
FROZEN_BN = ("eval", "train")
WANDB_MODES = ("auto", "online", "offline")
AUTO_IS_NONE = ("train.threads",)  # Optional fields whose None is spelled "auto" on the command line too


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"              # dataset name (a DATASETS registry entry)
    data_dir: Optional[str] = None          # else $FASTPNR_DATA, else ../shared/data beside the checkout
    image_size: Optional[int] = None        # resize at load time (e.g. Tiny-ImageNet to 32 for a CIFAR-like setting)
    resize: str = "stretch"                 # stretch: whole image; center: shorter side x256/224 + centre crop
    scenario: str = "class"               # class-, data- or domain-incremental task split
    num_tasks: int = 5                    # number of tasks the stream is split into (scenario stream: its chunks)
    stream_of: str = "class"                # scenario stream: the order of the chunks (class-, data-, domain-IL)
    batch_passes: int = 1                   # scenario stream: optimizer steps on each minibatch, fresh views and replay each (CLA authors' --mb-passes 3)
    split_seed: int = 5                     # class-IL permutation seed (anchors: seed_everything(5))
    data_split_seed: int = 42               # data-IL random_split seed (anchors: Generator().manual_seed(42))
    domain_order: Optional[tuple] = None    # domain-IL task order; default: the dataset's order
    train_fraction: float = 1.0             # seeded subsample of each task's images (smoke runs)
    test_fraction: float = 1.0              # seeded subsample of the test set (smoke runs)
    loader: str = "gpu"                   # training loader kind: gpu (resident images), torchvision, ffcv, dali
    num_workers: int = 4                    # torchvision / ffcv loaders
    prefetch: bool = True                   # CUDA: produce batch k+1 on a side stream while step k runs
    ffcv_order: str = "random"              # FFCV traversal: random, quasi_random (needs ffcv_os_cache false), sequential
    ffcv_os_cache: bool = True              # FFCV: read the .beton through the OS page cache (else its own)
    ffcv_batches_ahead: int = 3             # FFCV: batches decoded ahead
    ffcv_crop: str = "device"               # device: decode once, crop the views on the device; decoder: FFCV crops
    crop_size: Optional[int] = None         # default: the image size
    min_scale: float = 0.08                 # RandomResizedCrop lower scale (VICReg: 0.2)
    solarize_prob: tuple = (0.0, 0.2)     # solarization probability per view (one value: all views)
    blur_prob: tuple = (0.0, 0.0)         # Gaussian blur probability per view (one value: all views)
    skip_corrupt: bool = False            # skip undecodable images (counted in metrics.json) instead of stopping
    cache_dir: Optional[str] = None       # decode cache folder; default $FASTPNR_CACHE, else ~/.cache/fastpnr
    download: bool = True                   # fetch the official archive (CIFAR) into the data root when missing

    def __post_init__(self):
        require(self.scenario in SCENARIOS, "data.scenario", self.scenario, SCENARIOS)
        require(isinstance(self.num_tasks, int) and self.num_tasks >= 1, "data.num_tasks", self.num_tasks, "an integer >= 1")
        require(self.stream_of in STREAM_OF, "data.stream_of", self.stream_of, STREAM_OF)
        require(isinstance(self.batch_passes, int) and self.batch_passes >= 1, "data.batch_passes", self.batch_passes,
                "an integer >= 1")
        require(0 < self.train_fraction <= 1, "data.train_fraction", self.train_fraction, "0 < fraction <= 1")
        require(0 < self.test_fraction <= 1, "data.test_fraction", self.test_fraction, "0 < fraction <= 1")
        require(0 < self.min_scale <= 1, "data.min_scale", self.min_scale, "0 < min_scale <= 1")
        from loaders import LOADERS
        from loaders.config import CROP_MODES, ORDERS  # the loaders' own lists (torch-free): one source of truth

        from .data.decode import RESIZE_MODES
        require(self.resize in RESIZE_MODES, "data.resize", self.resize, RESIZE_MODES)
        require(self.image_size is None or self.image_size >= 8, "data.image_size", self.image_size, "None or >= 8")
        require(self.crop_size is None or self.crop_size >= 8, "data.crop_size", self.crop_size, "None or >= 8")
        for name in ("solarize_prob", "blur_prob"):
            v = getattr(self, name)
            require(len(v) in (1, 2) and all(0 <= p <= 1 for p in v), f"data.{name}", v, "one or two probabilities in [0, 1]")
        require(self.loader in LOADERS, "data.loader", self.loader, sorted(LOADERS))
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")
        require(self.ffcv_order in ORDERS, "data.ffcv_order", self.ffcv_order, ORDERS)
        require(self.ffcv_order != "quasi_random" or not self.ffcv_os_cache, "data.ffcv_os_cache",
                self.ffcv_os_cache, "false with data.ffcv_order=quasi_random (FFCV's page-local shuffle)")
        require(isinstance(self.ffcv_batches_ahead, int) and self.ffcv_batches_ahead >= 1, "data.ffcv_batches_ahead",
                self.ffcv_batches_ahead, "an integer >= 1")
        require(self.ffcv_crop in CROP_MODES, "data.ffcv_crop", self.ffcv_crop, CROP_MODES)


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet18"            # encoder: resnet18, resnet50, vit_tiny, vit_small, vit_base
    cifar_stem: bool = True               # 3x3 stride-1 first convolution and no max-pool (small images)
    stem_padding: int = 2                   # the anchors' quirk (not 1)
    zero_init_residual: Optional[bool] = None  # zero-init the last BN of each residual block; None: true for pocon (its authors'), else false
    channels_last: bool = True            # NHWC memory format for the model and the views
    width: int = 64                       # ResNet base width (layers w, 2w, 4w, 8w); 64 = the anchors'
    patch_size: int = 16                  # ViT: patch side in pixels (4 at 32 px, 8 at 64 px, 16 at 224 px)
    image_size: Optional[int] = None      # ViT: input side in pixels; None: the data's crop size (resolved at build)
    pos_embed: str = "learned"            # ViT position embeddings: learned, or sincos (MoCo v3's fixed 2-D table)
    drop_path: float = 0.0                # ViT stochastic depth rate of the last block (linear in depth from 0)
    freeze_patch_embed: bool = False      # ViT: keep the random patch projection (MoCo v3's stop-grad-conv1)
    depth: Optional[int] = None           # ViT blocks; None: the standard 12 (fewer: scaled-down CPU studies)

    def __post_init__(self):
        require(self.backbone in BACKBONE_NAMES, "model.backbone", self.backbone, sorted(BACKBONE_NAMES))
        require(isinstance(self.width, int) and self.width >= 1, "model.width", self.width, "an integer >= 1")
        require(self.stem_padding in (0, 1, 2, 3), "model.stem_padding", self.stem_padding, "0..3")


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "lars"               # lars (SGD + LARS trust ratio), plain sgd with momentum, or adamw
    betas: tuple = (0.9, 0.999)           # AdamW's (beta1, beta2)
    lr: float = 0.4                       # base learning rate of the backbone and heads (see scale_lr_by_batch)
    weight_decay: float = 1e-4            # L2 weight decay of the backbone and heads
    momentum: float = 0.9                 # SGD momentum
    lars_eta: float = 0.02                # LARS trust coefficient
    lars_clip: bool = True                # clip the LARS ratio: r = min(r / lr, 1)
    exclude_bias_n_norm: bool = True      # no LARS adaptation and no weight decay on biases and norm weights
    classifier_lr: float = 0.1            # learning rate of the online linear probe
    batch_size: int = 256                 # images per training step
    epochs: int = 500                       # per task
    warmup_epochs: int = 10               # linear warm-up epochs of each task, then cosine decay
    warmup_start_lr: float = 0.003        # learning rate at the start of the warm-up
    min_lr: float = 0.0                   # learning rate at the end of the cosine decay
    scale_lr_by_batch: bool = True          # effective lr = lr * batch_size / 256
    schedule_interval: str = "epoch"        # the anchors step the scheduler per epoch
    warmup_steps: int = 0                   # scenario stream: linear warm-up steps, then a constant lr over the stream

    def __post_init__(self):
        require(self.optimizer in OPTIMIZERS, "optim.optimizer", self.optimizer, OPTIMIZERS)
        require(self.lr > 0, "optim.lr", self.lr, "> 0")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        require(0 <= self.momentum < 1, "optim.momentum", self.momentum, "0 <= momentum < 1")
        require(len(self.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas),
                "optim.betas", self.betas, "two numbers in [0, 1)")
        require(self.classifier_lr > 0, "optim.classifier_lr", self.classifier_lr, "> 0")
        require(isinstance(self.batch_size, int) and self.batch_size >= 2, "optim.batch_size", self.batch_size, "an integer >= 2")
        require(isinstance(self.epochs, int) and self.epochs >= 1, "optim.epochs", self.epochs, "an integer >= 1")
        require(0 <= self.warmup_epochs, "optim.warmup_epochs", self.warmup_epochs, ">= 0")
        require(self.schedule_interval in ("epoch", "step"), "optim.schedule_interval", self.schedule_interval, ("epoch", "step"))
        require(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps,
                "an integer >= 0")

    def effective_lr(self, lr: float) -> float:
        return lr * self.batch_size / 256 if self.scale_lr_by_batch else lr


@dataclass(frozen=True)
class TrainConfig:
    device: str = "auto"                    # auto = cuda when available
    precision: str = "auto"               # autocast dtype of the step: auto = bf16 on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16), else fp32; fp16: CUDA only, with a GradScaler; fp64: float64 weights, exactness checks
    precision_reason: str = ""              # written by the run: why train.precision has its value (auto's choice); not an input
    matmul_precision: str = "high"          # float32 matmuls outside autocast on CUDA: high = TF32, highest = exact
    seed: int = 5                         # seed of the model init, loader batches and augmentations
    deterministic: bool = False           # deterministic algorithms (slower), cudnn.benchmark off
    log_every: int = 20                     # steps between host reads of the loss (a sync)
    online_probe: str = "full"              # full: the anchors' probe on the whole labelled train set (CIFAR-100 runs); task; off
    frozen_stream: bool = True              # frozen previous model on its own CUDA stream
    cuda_graph: str = "auto"                # capture the step in a CUDA graph: auto (on CUDA; silent elsewhere), true, false
    compile: str = "off"                    # torch.compile the online backbone: off, default, max-autotune-no-cudagraphs
    compile_backend: str = "inductor"       # torch.compile backend (inductor; eager/aot_eager to debug)
    graph_warmup: int = 3                   # eager rehearsal steps before capture (state restored after)
    steps_per_epoch: Optional[int] = None   # cap (smoke runs)
    max_tasks: Optional[int] = None         # stop after the first N tasks (a partial run; --resume --train.max_tasks M goes on)
    progress: bool = True                 # progress bar while training, decoding progress
    threads: Optional[int] = None           # CPU threads; None (or auto): the cores the load average at start leaves free, at least 1
    wandb: str = ""                         # Weights & Biases project to log to (pip install fastpnr[wandb]); empty: off
    wandb_entity: Optional[str] = None      # W&B entity (user or team); None: the account's default entity
    wandb_group: Optional[str] = None       # W&B run group (a study sets its folder name); None: no group
    wandb_name: Optional[str] = None        # W&B run name; None: the run folder's name
    wandb_mode: str = "auto"                # auto: online with a W&B login (WANDB_API_KEY, ~/.netrc, WANDB_MODE), else offline
    boundaries: str = "unknown"             # scenario stream: known tells the strategy each chunk's start (begin_task)

    def __post_init__(self):
        require(self.precision in PRECISIONS, "train.precision", self.precision, PRECISIONS)
        require(self.threads is None or (isinstance(self.threads, int) and self.threads >= 1), "train.threads",
                self.threads, "auto or an integer >= 1")
        require(self.compile in COMPILE_MODES, "train.compile", self.compile, COMPILE_MODES)
        require(self.compile == "off" or self.compile_backend == "inductor" or self.compile == "default",
                "train.compile", self.compile, f"default with train.compile_backend={self.compile_backend!r} "
                "(modes are inductor's)")
        require(self.matmul_precision in MATMUL_PRECISIONS, "train.matmul_precision", self.matmul_precision,
                MATMUL_PRECISIONS)
        require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "train.device", self.device, "auto, cpu, cuda[:N]")
        require(self.online_probe in PROBES, "train.online_probe", self.online_probe, PROBES)
        require(self.log_every >= 1, "train.log_every", self.log_every, ">= 1")
        object.__setattr__(self, "cuda_graph", _switch(self.cuda_graph))  # true/false as booleans or words
        require(self.cuda_graph in CUDA_GRAPH_MODES, "train.cuda_graph", self.cuda_graph, CUDA_GRAPH_MODES)
        require(self.graph_warmup >= 1, "train.graph_warmup", self.graph_warmup, ">= 1")
        require(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "train.steps_per_epoch", self.steps_per_epoch, "None or >= 1")
        require(self.max_tasks is None or self.max_tasks >= 1, "train.max_tasks", self.max_tasks, "None or an integer >= 1")
        require(self.wandb_mode in WANDB_MODES, "train.wandb_mode", self.wandb_mode, WANDB_MODES)
        require(self.boundaries in BOUNDARIES, "train.boundaries", self.boundaries, BOUNDARIES)


@dataclass(frozen=True)
class EvalConfig:
    protocol: str = "linear"                # which accuracy fills the accuracy matrix: linear, knn, online, official
    linear_epochs: int = 100                # epochs of the linear probe fitted after each task
    linear_lr: float = 0.1                  # learning rate of the linear probe
    linear_batch_size: int = 512            # batch size of the linear probe
    linear_weight_decay: float = 0.0        # weight decay of the linear probe
    linear_seeds: int = 3                   # feature-probe fits per task (seeds by one rule): matrix = mean, std beside
    label_fraction: float = 1.0             # stratified share of the probe's labels per class (semi-supervised: 0.01, 0.1)
    official_epochs: int = 100              # official protocol (PNR main_linear.py): epochs, lr x0.1 at 60% and 80%
    official_lr: Optional[float] = None     # official protocol lr; None: the method's (BYOL/MoCo 3.0, SimCLR 1.0, ...)
    official_batch_size: int = 256          # official protocol batch size
    official_momentum: float = 0.0          # official protocol SGD momentum (PNR 0.0; CaSSLe 0.9)
    official_seeds: int = 1                 # official-protocol fits per task (each a full augmented training)
    knn_k: int = 20                         # neighbours of the weighted kNN
    knn_temperature: float = 0.07           # temperature of the kNN's exponential vote weights
    train_fraction: float = 1.0             # share of the labelled train set used to fit the probe
    batch_size: int = 512                   # feature extraction
    forward_transfer: bool = True           # also evaluate the random-init model (b_j) for forward transfer
    every_steps: int = 50                   # scenario stream: kNN on every chunk's test images every N steps (and at the end)
    stream_linear: bool = False             # scenario stream: the linear probe too at every such point (slower)

    def __post_init__(self):
        require(self.protocol in PROTOCOLS, "eval.protocol", self.protocol, PROTOCOLS)
        require(self.linear_epochs >= 1, "eval.linear_epochs", self.linear_epochs, ">= 1")
        for name in ("linear_seeds", "official_seeds", "official_epochs"):
            v = getattr(self, name)
            require(isinstance(v, int) and v >= 1, f"eval.{name}", v, "an integer >= 1")
        require(0 < self.label_fraction <= 1, "eval.label_fraction", self.label_fraction, "0 < fraction <= 1")
        require(self.official_lr is None or self.official_lr > 0, "eval.official_lr", self.official_lr, "None or > 0")
        require(isinstance(self.official_batch_size, int) and self.official_batch_size >= 1, "eval.official_batch_size",
                self.official_batch_size, "an integer >= 1")
        require(0 <= self.official_momentum < 1, "eval.official_momentum", self.official_momentum, "0 <= momentum < 1")
        require(self.knn_k >= 1, "eval.knn_k", self.knn_k, ">= 1")
        require(isinstance(self.every_steps, int) and self.every_steps >= 1, "eval.every_steps", self.every_steps,
                "an integer >= 1")
        require(0 < self.train_fraction <= 1, "eval.train_fraction", self.train_fraction, "0 < fraction <= 1")


@dataclass(frozen=True)
class DistConfig:
    local_loss: bool = False                # true: SimCLR/Barlow/VICReg losses over each rank's batch (official per-GPU code)
    sync_batchnorm: bool = True             # BatchNorm statistics over the global batch under torchrun; false: per rank
    timeout_s: int = 3600                   # process-group timeout (s): a collective waiting longer stops the run
    barlow_gpus: Optional[int] = None       # Barlow Twins' C as the official code on N GPUs (per-GPU standardization, all-reduced outside autograd: every Barlow gradient 1/N, PNR's negative term exact); None: the exact global batch

    def __post_init__(self):
        require(isinstance(self.timeout_s, int) and self.timeout_s >= 10, "dist.timeout_s", self.timeout_s, "an integer >= 10")
        require(self.barlow_gpus is None or (isinstance(self.barlow_gpus, int) and self.barlow_gpus >= 1),
                "dist.barlow_gpus", self.barlow_gpus, "None or an integer >= 1")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: Any = None
    regularizer: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    out: Optional[str] = None

    def __post_init__(self):
        # Checks across sections. An untrained probe has no accuracy to report.
        require(not (self.eval.protocol == "online" and self.train.online_probe == "off"), "eval.protocol",
                self.eval.protocol, "linear or knn with --train.online_probe off (the online probe is not trained)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "eval": EvalConfig,
            "dist": DistConfig}
ALIASES = {  # short command-line names -> dotted fields
    "method": "method.name", "regularizer": "regularizer.name", "dataset": "data.dataset",
    "scenario": "data.scenario", "num_tasks": "data.num_tasks", "data_dir": "data.data_dir", "loader": "data.loader",
    "epochs": "optim.epochs", "batch_size": "optim.batch_size", "lr": "optim.lr", "seed": "train.seed",
    "device": "train.device", "precision": "train.precision", "skip_corrupt": "data.skip_corrupt",
}


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ----------------------------------------------------------------------------------------------- presets
# Hyper-parameters per method as shipped in csm9493/PNR bash_files/continual/cifar/*_pnr.sh (anchors §1.3).
_CIFAR_PER_METHOD = {
    "simclr": {"optim": {"lr": 0.6, "classifier_lr": 0.1, "weight_decay": 1e-4}, "method": {"temperature": 0.2}},
    "mocov2plus": {"optim": {"lr": 0.6, "classifier_lr": 0.3, "weight_decay": 1e-4, "exclude_bias_n_norm": False},
                   "method": {"temperature": 0.2, "queue_size": 65536, "base_tau": 0.99, "final_tau": 0.999}},
    "byol": {"optim": {"lr": 1.0, "classifier_lr": 0.1, "weight_decay": 1e-5},
             "method": {"proj_hidden": 4096, "proj_out": 256, "pred_hidden": 4096}, "regularizer": {"neg_weight": 0.5}},
    "barlow": {"optim": {"lr": 0.4, "classifier_lr": 0.1, "weight_decay": 1e-4}, "method": {"scale": 0.1},
               "regularizer": {"neg_weight": 1.0}},
    "vicreg": {"optim": {"lr": 0.3, "classifier_lr": 0.3, "weight_decay": 1e-4},
               "data": {"min_scale": 0.2, "solarize_prob": (0.1, 0.1)}, "regularizer": {"neg_weight": 23.0, "pos_weight": 25.0}},
    "simsiam": {"optim": {"lr": 0.5, "classifier_lr": 0.1, "weight_decay": 1e-5}},
}
# MoCo v3's ViT recipe (facebookresearch/moco-v3 CONFIG.md; docs/FIDELITY.md "MoCo v3"): AdamW, lr 1.5e-4 x batch/256,
# weight decay 0.1 on every parameter, warm-up from 0 then cosine per step, t 0.2, momentum 0.99 -> 1 (cosine).
# classifier_lr: ours (the online probe shares the optimizer: an AdamW step, not SGD's 0.1).
_MOCOV3 = {"optim": {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.1, "exclude_bias_n_norm": False,
                     "warmup_start_lr": 0.0, "schedule_interval": "step", "classifier_lr": 1e-3},
           "method": {"temperature": 0.2, "base_tau": 0.99, "final_tau": 1.0}}
_CIFAR_PER_METHOD["mocov3"] = _MOCOV3
# The smoke preset's MoCo v3: heads of 512 (the paper's 4096 would be most of a small ViT's CPU step).
_MOCOV3_SMOKE = {**_MOCOV3, "method": {**_MOCOV3["method"], "proj_hidden": 512, "pred_hidden": 512}}
# ImageNet-100 scripts (anchors §1.3): 400 epochs, DALI recipe (blur 1.0/0.1).
_IN100_PER_METHOD = {
    "simclr": {"optim": {"lr": 0.4, "weight_decay": 1e-4}, "method": {"temperature": 0.2}},
    "mocov2plus": {"optim": {"lr": 0.6, "classifier_lr": 0.3, "weight_decay": 1e-4, "exclude_bias_n_norm": False},
                   "method": {"temperature": 0.2, "base_tau": 0.99, "final_tau": 0.999}},
    "byol": {"optim": {"lr": 0.6, "weight_decay": 1e-5}, "method": {"proj_hidden": 4096, "proj_out": 256, "pred_hidden": 8192},
             "regularizer": {"neg_weight": 1.0}},
    "barlow": {"optim": {"lr": 0.4, "weight_decay": 1e-4}, "method": {"scale": 0.1}, "regularizer": {"neg_weight": 1.0}},
    "vicreg": {"optim": {"lr": 0.4, "weight_decay": 1e-4}, "data": {"min_scale": 0.2, "solarize_prob": (0.1, 0.1), "blur_prob": (0.5, 0.5)},
               "regularizer": {"neg_weight": 23.0, "pos_weight": 25.0}},
    "mocov3": _MOCOV3,
}

# Data-IL scripts change only the negative weights (anchors §1.3: BYOL 0.1, Barlow 0.1, VICReg 5).
_IN100_DATA_PER_METHOD = {
    **_IN100_PER_METHOD,
    "byol": {**_IN100_PER_METHOD["byol"], "regularizer": {"neg_weight": 0.1}},
    "barlow": {**_IN100_PER_METHOD["barlow"], "regularizer": {"neg_weight": 0.1}},
    "vicreg": {**_IN100_PER_METHOD["vicreg"], "regularizer": {"neg_weight": 5.0, "pos_weight": 25.0}},
}

# DomainNet scripts (anchors §1.3): the ImageNet-100 lr/wd/aug, negative weights BYOL 1.0, Barlow 1.0, VICReg 8.0.
_DOMAINNET_PER_METHOD = {
    **_IN100_PER_METHOD,
    "byol": {**_IN100_PER_METHOD["byol"], "regularizer": {"neg_weight": 1.0}},
    "barlow": {**_IN100_PER_METHOD["barlow"], "regularizer": {"neg_weight": 1.0}},
    "vicreg": {**_IN100_PER_METHOD["vicreg"], "regularizer": {"neg_weight": 8.0, "pos_weight": 25.0}},
}
# The anchors' DomainNet task order (fastpnr.data.registry.DOMAINNET_DOMAINS, cassle/methods/base.py).
_DOMAINNET_ORDER = ("real", "quickdraw", "painting", "sketch", "infograph", "clipart")

# The smoke preset: the CIFAR scripts' learning rates etc., with heads sized for a width-16 backbone (feature dim 128)
# so that no method's heads or queue cost more than its backbone (at the anchors' sizes MoCo's 65,536-key queue, BYOL's
# 4,096-wide heads and the GSG methods ran 4-60x slower than SimCLR at width 8 / 16 px, issue 32).
_SMOKE_HEADS = {"simclr": {"proj_hidden": 512}, "mocov2plus": {"proj_hidden": 512, "queue_size": 4096},
                "byol": {"proj_hidden": 512, "proj_out": 128, "pred_hidden": 512},
                "simsiam": {"proj_hidden": 512, "proj_out": 512, "pred_hidden": 128},
                "barlow": {"proj_hidden": 512, "proj_out": 512}, "vicreg": {"proj_hidden": 512, "proj_out": 512},
                "simsiam_gsg": {"proj_hidden": 512, "proj_out": 512, "pred_hidden": 128},
                "byol_gsg": {"proj_hidden": 512, "proj_out": 512, "pred_hidden": 128}}
_SMOKE_PER_METHOD = {name: _deep_merge(_CIFAR_PER_METHOD.get(name, {}), {"method": heads})
                     for name, heads in _SMOKE_HEADS.items()}
# GSG's 4 views per image make its step 2-2.7x SimCLR's in CPU time (fastpnr bench_cpu --methods all, BENCHMARKS.md):
# 20% of each task instead of 30% keeps its run within ~2x SimCLR's
for _gsg in ("simsiam_gsg", "byol_gsg"):
    _SMOKE_PER_METHOD[_gsg] = _deep_merge(_SMOKE_PER_METHOD[_gsg], {"data": {"train_fraction": 0.2}})


def _VIT_MODEL(backbone: str, patch_size: int) -> dict:  # noqa: N802 - reads as a constant in PRESETS
    """A ViT preset's model: MoCo v3's fixed sin-cos positions and random (frozen) patch projection."""
    return {"backbone": backbone, "patch_size": patch_size, "pos_embed": "sincos", "freeze_patch_embed": True}


# Online probe (train.online_probe): the anchors train it on CIFAR-100 only (main_pretrain.py sets the probe batch only
# for cifar100). The ImageNet-100 and DomainNet presets, and fastpnr's own presets that use their recipes
# (tinyimagenet100-5t, pacs-domain), leave it off: its train-mode forward of all-class labelled batches would move the
# backbone's BN running statistics with other tasks' images.
PRESETS: dict[str, dict] = {
    # The README's first command: real CIFAR-10, 2 class-IL tasks, SimCLR + PNR, about a minute on a 2-core CPU.
    "smoke": {
        "description": "CIFAR-10 at 16 px, 2 class-IL tasks, 30% of each task, 1 epoch, SimCLR+PNR on a width-16 "
                       "ResNet-18 (1/64 of the anchors' FLOPs per image) with small heads per method (projectors and "
                       "distillers 512 wide, MoCo queue 4096; GSG's 4 views on 20% of each task) so that every method runs "
                       "within ~2x SimCLR's time; "
                       "linear accuracy after each task beside the random-init backbone's; ~1-2 min on a 2-core CPU",
        "data": {"dataset": "cifar10", "num_tasks": 2, "train_fraction": 0.3, "test_fraction": 0.2, "image_size": 16},
        "model": {"width": 16},
        "method": {"name": "simclr"}, "regularizer": {"name": "pnr", "distill_hidden": 512},
        "optim": {"batch_size": 128, "epochs": 1, "warmup_epochs": 0, "lr": 0.3},
        "train": {"online_probe": "task", "log_every": 5},
        # one probe fit per task: the quick-start job stays short (every other preset: eval.linear_seeds 3); the
        # random-init backbone's accuracy (forward_transfer) is the baseline that shows the run learned
        "eval": {"protocol": "linear", "linear_epochs": 30, "train_fraction": 0.1, "forward_transfer": True,
                 "linear_seeds": 1},
        "per_method": {**_SMOKE_PER_METHOD, "mocov3": _MOCOV3_SMOKE},
    },
    # Online continual SSL (issue 35): a class-ordered stream of 20 chunks seen once each, kNN along the stream.
    "stream": {
        "description": "CIFAR-10 at 16 px, a class-ordered stream of 20 chunks x 1 pass, ResNet-18 width 8, fp32, "
                       "SimCLR, kNN every 100 steps; minutes on a 2-core CPU",
        "data": {"dataset": "cifar10", "image_size": 16, "scenario": "stream", "stream_of": "class", "num_tasks": 20},
        "model": {"width": 8}, "method": {"name": "simclr"}, "regularizer": {"name": "finetune"},
        "optim": {"batch_size": 64, "epochs": 1, "warmup_epochs": 0, "lr": 0.3},
        "train": {"precision": "fp32", "online_probe": "off", "log_every": 20},
        "eval": {"protocol": "knn", "every_steps": 100, "train_fraction": 0.2, "forward_transfer": False},
        "per_method": _CIFAR_PER_METHOD,
    },
    "cifar100-5t": {
        "description": "CIFAR-100 class-IL, 5 tasks, 500 epochs per task, PNR CIFAR scripts (online probe)",
        "data": {"dataset": "cifar100", "num_tasks": 5}, "method": {"name": "simclr"},
        "regularizer": {"name": "pnr", "frozen_bn": "train"},  # the anchors' CIFAR runs: train-mode BN after epoch 0 (§2.0)
        "optim": {"epochs": 500}, "eval": {"protocol": "online"}, "per_method": _CIFAR_PER_METHOD,
    },
    "cifar100-10t": {
        "description": "CIFAR-100 class-IL, 10 tasks, 500 epochs per task, PNR CIFAR scripts (online probe)",
        "data": {"dataset": "cifar100", "num_tasks": 10}, "method": {"name": "simclr"},
        "regularizer": {"name": "pnr", "frozen_bn": "train"},
        "optim": {"epochs": 500}, "eval": {"protocol": "online"}, "per_method": _CIFAR_PER_METHOD,
    },
    "cifar10-5t": {
        "description": "CIFAR-10 (shipped JPEGs) class-IL, 5 tasks x 2 classes, 200 epochs per task",
        "data": {"dataset": "cifar10", "num_tasks": 5}, "method": {"name": "simclr"}, "regularizer": {"name": "pnr"},
        "optim": {"epochs": 200}, "per_method": _CIFAR_PER_METHOD,
    },
    "tinyimagenet100-5t": {
        "description": "Tiny-ImageNet-100 (64 px) class-IL, 5 tasks x 20 classes, 200 epochs, ImageNet-100 recipes",
        "data": {"dataset": "tinyimagenet100", "num_tasks": 5, "blur_prob": (1.0, 0.1)},
        "model": {"cifar_stem": True}, "method": {"name": "simclr"}, "regularizer": {"name": "pnr"},
        "optim": {"epochs": 200}, "train": {"online_probe": "off"}, "per_method": _IN100_PER_METHOD,
    },
    # ViT presets (docs/FIDELITY.md "ViT presets"): MoCo v3's ViT recipe on the stream of their ResNet counterparts.
    "cifar100-5t-vit": {
        "description": "CIFAR-100 class-IL, 5 tasks, ViT-Tiny/4 at 32 px, MoCo v3 + PNR, 500 epochs per task (online probe)",
        "data": {"dataset": "cifar100", "num_tasks": 5}, "model": _VIT_MODEL("vit_tiny", 4),
        "method": {"name": "mocov3"}, "regularizer": {"name": "pnr", "frozen_bn": "train"},  # as cifar100-5t (§2.0)
        "optim": {"epochs": 500, "warmup_epochs": 40}, "eval": {"protocol": "online"}, "per_method": _CIFAR_PER_METHOD,
    },
    "tinyimagenet100-5t-vit": {
        "description": "Tiny-ImageNet-100 (64 px) class-IL, 5 tasks, ViT-Small/8, MoCo v3 + PNR, 200 epochs per task",
        "data": {"dataset": "tinyimagenet100", "num_tasks": 5, "blur_prob": (1.0, 0.1)},
        "model": _VIT_MODEL("vit_small", 8), "method": {"name": "mocov3"}, "regularizer": {"name": "pnr"},
        "optim": {"epochs": 200, "warmup_epochs": 40}, "train": {"online_probe": "off"}, "per_method": _IN100_PER_METHOD,
    },
    "imagenet100-5t": {
        "description": "ImageNet-100 (imagefolder) class-IL, 5 tasks, 400 epochs, 224 px, the anchors' IN-100 recipe"
                       "; Barlow: exact global-batch gradients (official 2 GPUs: every Barlow gradient halved, --dist.barlow_gpus 2)",
        # image_size: ImageNet images come in every size; decoded at 224 for evaluation as the anchors evaluate
        # (resize 256 + centre crop 224); DALI trains on the original JPEGs.
        "data": {"dataset": "imagefolder", "num_tasks": 5, "image_size": 224, "resize": "center", "crop_size": 224, "blur_prob": (1.0, 0.1),
                 "loader": "dali"},
        "model": {"cifar_stem": False}, "method": {"name": "simclr"}, "regularizer": {"name": "pnr"},
        "optim": {"epochs": 400}, "train": {"online_probe": "off"}, "eval": {"protocol": "official"}, "per_method": _IN100_PER_METHOD,
    },
    "imagenet100-data-5t": {
        "description": "ImageNet-100 (imagefolder) data-IL, 5 random chunks, 400 epochs, 224 px, data-IL negative weights"
                       "; Barlow: exact global-batch gradients (official 2 GPUs: every Barlow gradient halved, --dist.barlow_gpus 2)",
        "data": {"dataset": "imagefolder", "scenario": "data", "num_tasks": 5, "image_size": 224, "resize": "center", "crop_size": 224,
                 "blur_prob": (1.0, 0.1), "loader": "dali"},
        "model": {"cifar_stem": False}, "method": {"name": "simclr"}, "regularizer": {"name": "pnr"},
        "optim": {"epochs": 400}, "train": {"online_probe": "off"}, "eval": {"protocol": "official"}, "per_method": _IN100_DATA_PER_METHOD,
    },
    "pacs-domain": {
        "description": "PACS domain-IL photo -> art_painting -> cartoon -> sketch (128 px resized to 64), 100 epochs",
        "data": {"dataset": "pacs", "scenario": "domain", "num_tasks": 4, "image_size": 64,
                 "domain_order": ("photo", "art_painting", "cartoon", "sketch"), "blur_prob": (1.0, 0.1)},
        "model": {"cifar_stem": True}, "method": {"name": "simclr"}, "regularizer": {"name": "pnr"},
        "optim": {"epochs": 100}, "train": {"online_probe": "off"}, "per_method": _IN100_PER_METHOD,
    },
    "domainnet-6t": {
        "description": "DomainNet domain-IL, 6 tasks real -> quickdraw -> painting -> sketch -> infograph -> clipart, "
                       "200 epochs, 224 px, DALI, the anchors' DomainNet recipe"
                       "; Barlow: exact global-batch gradients (official 2 GPUs: every Barlow gradient halved, --dist.barlow_gpus 2)",
        # image_size: DomainNet images come in every size; decoded at 224 for evaluation as the anchors evaluate
        # (resize 256 + centre crop 224); DALI trains on the original JPEGs.
        "data": {"dataset": "domainnet", "scenario": "domain", "num_tasks": 6, "domain_order": _DOMAINNET_ORDER,
                 "image_size": 224, "resize": "center", "crop_size": 224, "blur_prob": (1.0, 0.1), "loader": "dali"},
        "model": {"cifar_stem": False}, "method": {"name": "simclr"}, "regularizer": {"name": "pnr"},
        "optim": {"epochs": 200}, "train": {"online_probe": "off"}, "eval": {"protocol": "official"}, "per_method": _DOMAINNET_PER_METHOD,
    },
}


# ----------------------------------------------------------------------------------------------- building
def _type_of(cls, name):
    return typing.get_type_hints(cls)[name]


def _switch(value) -> str:
    """A mode that may also be given as a boolean (configs written before it had "auto"): "true" / "false"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    words = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}
    text = str(value).lower()
    return words.get(text, text)


def _cast(value, typ, field_name):
    """Cast a command-line value to the dataclass field's type, or fail with one line."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        if field_name in AUTO_IS_NONE and isinstance(value, str) and value.lower() == "auto":
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _cast(value, inner, field_name)
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return value.lower() in ("true", "1", "yes", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            return str(value)
        if typ is tuple:
            if isinstance(value, str):
                value = [v.strip() for v in value.strip("()[]").split(",") if v.strip()]
                value = [_number_or_str(v) for v in value]
            if not isinstance(value, (list, tuple)):
                value = [value]
            return tuple(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"{field_name}={value!r} is invalid; allowed: a value of type {getattr(typ, '__name__', typ)}")


def _number_or_str(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def _make(cls, values: dict, section: str, strict_keys: set):
    """Build dataclass ``cls`` from ``values``; keys in ``strict_keys`` must exist, others are dropped if unknown."""
    names = {f.name for f in fields(cls) if f.init}
    unknown = sorted(k for k in values if k not in names and k in strict_keys)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]} is not a known option; allowed: {', '.join(sorted(names))}")
    kwargs = {k: _cast(v, _type_of(cls, k), f"{section}.{k}") for k, v in values.items() if k in names}
    return cls(**kwargs)


def normalize_overrides(overrides: dict) -> dict:
    """{"optim.lr": 0.1, "method": "byol", "data-dir": "x"} -> {"optim": {"lr": 0.1}, "method": {"name": "byol"}, ...}."""
    nested: dict = {}
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key in ALIASES:
            key = ALIASES[key]
        if key == "out":
            nested["out"] = value
            continue
        if "." not in key:
            allowed = sorted(set(ALIASES) | {f"{s}.<field>" for s in (*SECTIONS, "method", "regularizer")} | {"out"})
            raise ConfigError(f"option {key!r} is not known; allowed: {', '.join(allowed)}")
        section, name = key.split(".", 1)
        if section not in (*SECTIONS, "method", "regularizer"):
            raise ConfigError(f"option {key!r} is not known; sections allowed: {', '.join((*SECTIONS, 'method', 'regularizer'))}")
        nested.setdefault(section, {})[name] = value
    return nested


# the residual blocks' init of the strategies whose authors build their networks otherwise than the PNR code
ZERO_INIT_RESIDUAL = {"pocon": True}  # alviur/pocon_wacv2024: src/approach/sslModels.py L60/L65, copyOPscratch.py L448


def strategy_model_defaults(model: ModelConfig, regularizer: str) -> ModelConfig:
    """``model.zero_init_residual`` None resolved to the strategy's value (POCON: true, for its main and expert
    networks; every other strategy: false)."""
    if model.zero_init_residual is not None:
        return model
    return dataclasses.replace(model, zero_init_residual=ZERO_INIT_RESIDUAL.get(regularizer, False))


def build_config(preset: str | None = "smoke", overrides: Optional[dict] = None,
                 config_file: str | None = None, combinations: bool = True) -> RunConfig:
    """Resolve a run configuration from a preset name and dotted overrides (see module docstring).

    ``config_file`` (``fastpnr train --config FILE``): a JSON or YAML file shaped like a run's ``config.json``, laid
    over the preset (``preset=None``: over the dataclass defaults), under the overrides. Its keys are as strict as
    the command line's; an error in a value the file set names the file. Everything but the checks across sections
    (``validate_combinations``, on the method and strategy classes: torch) runs without importing torch;
    ``combinations=False`` leaves those out (``fastpnr train`` runs them once torch is loaded)."""
    from .method_configs import METHOD_CONFIGS as METHODS
    from .regularizer_configs import REGULARIZER_CONFIGS as REGULARIZERS

    base, per_method_blocks = {}, {}
    if preset is not None:
        require(preset in PRESETS, "preset", preset, sorted(PRESETS))
        base = {k: v for k, v in PRESETS[preset].items() if k not in ("description", "per_method")}
        per_method_blocks = PRESETS[preset].get("per_method", {})
    user = normalize_overrides(overrides or {})
    from_file = read_config_file(config_file) if config_file is not None else {}
    method_name = user.get("method", {}).get("name", from_file.get("method", {}).get(
        "name", base.get("method", {}).get("name", "simclr")))
    if config_file is not None:
        reg_name = user.get("regularizer", {}).get("name", from_file.get("regularizer", {}).get(
            "name", base.get("regularizer", {}).get("name", "finetune")))
        check_file_keys(from_file, config_file, method_name, reg_name)
    try:
        require(method_name in METHODS, "method", method_name, sorted(METHODS))
        per_method = per_method_blocks.get(method_name, {})
        merged = _deep_merge(_deep_merge(_deep_merge(base, per_method), from_file), user)
        strict = _deep_merge(from_file, user)  # keys given by the user (file or command line) must exist

        sections = {}
        for name, cls in SECTIONS.items():
            sections[name] = _make(cls, merged.get(name, {}), name, set(strict.get(name, {})))
        method_cfg_cls = METHODS[method_name]
        method_values = dict(merged.get("method", {}), name=method_name)
        method_cfg = _make(method_cfg_cls, method_values, "method", set(strict.get("method", {})))

        reg_values = dict(merged.get("regularizer", {}))
        reg_name = reg_values.get("name", "finetune")
        require(reg_name in REGULARIZERS, "regularizer", reg_name, sorted(REGULARIZERS))
        reg_cfg = _make(REGULARIZERS[reg_name], reg_values, "regularizer", set(strict.get("regularizer", {})))
        sections["model"] = strategy_model_defaults(sections["model"], reg_name)
        cfg = RunConfig(method=method_cfg, regularizer=reg_cfg, out=merged.get("out"), **sections)
        if combinations:
            cfg = validate_combinations(cfg)
    except ConfigError as e:
        raise _blame_file(e, config_file, from_file, user) from None
    check_extras(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------- config files
CONFIG_FORMATS = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}
FILE_KEYS = (*SECTIONS, "method", "regularizer", "out")


def read_config_file(path: str) -> dict:
    """The nested dict of a JSON or YAML configuration file (a run's ``config.json`` is one). A file that is missing,
    does not parse or is not a mapping is one line naming the file (and the line where parsing stopped)."""
    from pathlib import Path

    p = Path(path)
    kind = CONFIG_FORMATS.get(p.suffix.lower())
    require(kind is not None, "--config", str(path), f"a file ending in {', '.join(CONFIG_FORMATS)}")
    if not p.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = p.read_text()
    if kind == "JSON":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path}: line {e.lineno} does not parse as JSON ({e.msg})") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"--config {path}: YAML files need PyYAML: install fastpnr[yaml] (pip install pyyaml), "
                              "or give the configuration as JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            where = f"line {mark.line + 1}" if mark is not None else "the file"
            what = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"--config {path}: {where} does not parse as YAML ({what})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: holds a {type(data).__name__}; allowed: a mapping of sections "
                          f"({', '.join(FILE_KEYS)}), as in a run's config.json")
    return data


def check_file_keys(data: dict, path: str, method_name: str, reg_name: str) -> None:
    """Every key of a configuration file is a section and a field of it (the method's and regularizer's fields are
    those of ``method_name`` / ``reg_name``, the names the run resolves to), else one line naming file and key."""
    from .method_configs import METHOD_CONFIGS
    from .regularizer_configs import REGULARIZER_CONFIGS

    for key, value in data.items():
        if key not in FILE_KEYS:
            raise ConfigError(f"--config {path}: key {key!r} is not known; allowed at the top: {', '.join(FILE_KEYS)}")
        if key == "out":
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"--config {path}: {key} holds {value!r}; allowed: a mapping of {key}'s fields")
        if key in SECTIONS:
            cls, owner = SECTIONS[key], f"section {key}"
        elif key == "method":
            cls, owner = METHOD_CONFIGS.get(method_name), f"method {method_name}"
        else:
            cls, owner = REGULARIZER_CONFIGS.get(reg_name), f"regularizer {reg_name}"
        if cls is None:
            continue  # the unknown name itself is reported by build_config
        names = sorted(f.name for f in fields(cls) if f.init)
        for name in value:
            if name not in names:
                raise ConfigError(f"--config {path}: key {key}.{name} is not a field of {owner}; allowed: "
                                  f"{', '.join(names)}")


def _blame_file(error: ConfigError, path: str | None, from_file: dict, user: dict) -> ConfigError:
    """``error`` prefixed with the file's name when the field it names was set by the file (not the command line)."""
    if path is None:
        return error
    match = re.match(r"([A-Za-z_]+(?:\.[A-Za-z_]+)?)[=\s]", str(error))
    field_name = match.group(1) if match else ""
    if field_name in ("method", "regularizer"):
        field_name += ".name"
    section, _, name = field_name.partition(".")
    in_file = name in from_file.get(section, {}) if isinstance(from_file.get(section), dict) else False
    on_command_line = name in user.get(section, {})
    return ConfigError(f"--config {path}: {error}") if in_file and not on_command_line else error


def config_warnings(cfg: RunConfig) -> list[str]:
    """Settings that are allowed but contradict each other, one line each (the run prints them before reading data)."""
    o, lines = cfg.optim, []
    if 0 < o.epochs <= o.warmup_epochs:  # a preset's warm-up kept while --optim.epochs shortens a trial run
        lines.append(f"warning: optim.warmup_epochs={o.warmup_epochs} >= optim.epochs={o.epochs}: every epoch of a "
                     f"task is in the linear warm-up (the lr never reaches optim.lr nor decays); set "
                     f"--optim.warmup_epochs below {o.epochs} (e.g. 0)")
    return lines


def check_extras(cfg: RunConfig) -> None:
    """Optional packages a new or resumed run asks for are installed (checked without importing them)."""
    import importlib.util

    if cfg.train.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"train.wandb={cfg.train.wandb!r} needs Weights & Biases: install fastpnr[wandb] "
                          "(pip install wandb), or leave train.wandb empty")


def config_from_dict(d: dict) -> RunConfig:
    """Inverse of ``RunConfig.to_dict`` (used when resuming from a checkpoint)."""
    from .method_configs import METHOD_CONFIGS
    from .regularizer_configs import REGULARIZER_CONFIGS

    # .get: checkpoints written before a section existed (dist) take its defaults
    sections = {name: _make(cls, d.get(name, {}), name, set(d.get(name, {}))) for name, cls in SECTIONS.items()}
    method_cfg = _make(METHOD_CONFIGS[d["method"]["name"]], d["method"], "method", set(d["method"]))
    reg_cfg = _make(REGULARIZER_CONFIGS[d["regularizer"]["name"]], d["regularizer"], "regularizer", set(d["regularizer"]))
    return validate_combinations(RunConfig(method=method_cfg, regularizer=reg_cfg, out=d.get("out"), **sections))


def config_with_overrides(d: dict, overrides: dict) -> RunConfig:
    """A saved configuration (``RunConfig.to_dict``) with dotted ``overrides`` applied (``--resume DIR --train.x v``)."""
    cfg = config_from_dict(_deep_merge(d, normalize_overrides(overrides)))
    check_extras(cfg)
    return cfg


def validate_combinations(cfg: RunConfig) -> RunConfig:
    """Checks across sections (method x regularizer x optim: VICReg-PNR weights, MoCo queue sizes vs the batch), at
    build time, so that a bad combination stops before a run folder is written or data is loaded."""
    from .methods import METHODS
    from .regularizers import REGULARIZERS

    from .regularizers.replay_loader import check_replay_config

    cfg = resolve_vit_input(cfg)
    METHODS[cfg.method.name][0].check_run_config(cfg)
    REGULARIZERS[cfg.regularizer.name][0].check_run_config(cfg)
    check_replay_config(cfg)
    from .data.stream import check_stream_config

    check_stream_config(cfg)
    return cfg


def resolve_vit_input(cfg: RunConfig) -> RunConfig:
    """A ViT's position table is built for one input size: ``model.image_size`` (None: the training crop, which must
    also be the size the evaluation sees), checked against ``model.patch_size``. ResNets pass unchanged."""
    from .data.registry import get_spec
    from .models import is_vit
    from .models.vit import check_vit

    m, d = cfg.model, cfg.data
    if not is_vit(m.backbone):
        return cfg
    eval_size = d.image_size or get_spec(d.dataset).native_size
    crop = d.crop_size or eval_size
    size = m.image_size if m.image_size is not None else crop
    require(size is not None, "model.image_size", size, f"a size in pixels for {d.dataset} (its images come in "
            "every size): set data.image_size")
    require(crop in (None, size) and eval_size in (None, size), "model.image_size", size,
            f"the training crop ({crop} px) and the evaluated image size ({eval_size} px): a ViT takes one input size")
    check_vit(m.backbone, m.patch_size, size, m.pos_embed, m.drop_path, m.depth)
    return dataclasses.replace(cfg, model=dataclasses.replace(m, image_size=size))


def format_config(cfg: RunConfig, out=None) -> str:
    """One line per section; ``out``: the run folder really written (``--out``), shown instead of ``cfg.out``."""
    lines = []
    for sec, value in cfg.to_dict().items():
        if isinstance(value, dict):
            lines.append(f"{sec}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
        else:
            lines.append(f"{sec}: {out if sec == 'out' and out is not None else value}")
    return "\n".join(lines)
