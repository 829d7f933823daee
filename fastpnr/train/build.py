"""The models of a run: the method and the strategy, seeded, on the device, in the run's dtype, compiled."""
from __future__ import annotations

import torch

from fastpnr.methods import build_method
from fastpnr.regularizers import build_regularizer
from fastpnr.system import distributed
from fastpnr.system.precision import PARAM_DTYPES
from fastpnr.system.runtime import seed_everything
from .trainer import compile_backbone


def build_models(cfg, num_classes: int, device: torch.device, dist, log=print):
    """(method, regularizer) of a run, seeded by ``train.seed``, on ``device`` in the weights' dtype of
    ``train.precision`` (integer buffers keep theirs) and ``model.channels_last``; global-batch BatchNorm under
    torchrun with ``dist.sync_batchnorm``; ``train.compile`` compiles the backbone (and says so in ``log``)."""
    seed_everything(cfg.train.seed)
    method = build_method(cfg.method, cfg.model, num_classes)
    regularizer = build_regularizer(cfg.regularizer, method)
    if dist.enabled and cfg.dist.sync_batchnorm:  # the online, EMA and frozen models: global-batch BN
        distributed.convert_batchnorm(method)
        distributed.convert_batchnorm(regularizer)
    method.dist = regularizer.dist = dist
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    for module in (method, regularizer):
        module.to(device, PARAM_DTYPES[cfg.train.precision], memory_format=memory_format)
    if compile_backbone(method, cfg.train):
        log(f"[fastpnr] torch.compile of the backbone: mode {cfg.train.compile}, backend {cfg.train.compile_backend} "
            "(compiles on the first steps)")
    return method, regularizer
