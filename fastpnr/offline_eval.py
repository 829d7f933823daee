"""Offline evaluation of a saved model (``task{t}.pt`` or ``checkpoint.pt``): linear probe or kNN per task.

Two linear protocols:
- ``features`` (default): a linear classifier on frozen, precomputed features (fast; the continual loop's protocol);
- ``augmented``: the anchors' offline protocol (cassle/methods/linear.py): the frozen backbone in eval mode, a
  linear layer trained with SGD on random-resized-crop + flip batches, MultiStep(0.6, 0.8) decay, momentum 0.0 as
  the PNR code (CaSSLe used 0.9: ``--momentum 0.9``).

Domain-IL runs also report the accuracy per domain; ``per_domain=True`` adds the anchors' DomainNet protocol of one
more linear run per domain (trained and tested on that domain only, ``per_domain_runs``) beside the all-domain run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import evaluation as ev
from .checkpoint import load_checkpoint
from .config import config_from_dict
from .continual import ContinualRun, _images
from .errors import ConfigError, require
from .methods import build_method
from .trainer import AUTOCAST_DTYPES


def _load_run(checkpoint: str, data_dir: str | None, device: str):
    ckpt = load_checkpoint(checkpoint)
    d = ckpt["config"]
    if data_dir is not None:
        d["data"]["data_dir"] = data_dir
    d["train"]["device"] = device
    d["train"]["progress"] = False
    cfg = config_from_dict(d)
    run = ContinualRun(cfg, Path(checkpoint).parent if Path(checkpoint).is_file() else Path(checkpoint), log=lambda *a: None)
    return ckpt, cfg, run


def _prepare(checkpoint, data_dir, device, train_fraction):
    ckpt, cfg, run = _load_run(checkpoint, data_dir, device)
    run._load_data(write_tasks=False)
    if train_fraction is not None:
        from .continual import _subsample

        run.eval_train = _subsample(np.arange(len(run.train_set)), train_fraction, cfg.data.split_seed + 998)
    method = build_method(cfg.method, cfg.model, run.num_classes).to(run.device)
    method.load_state_dict(ckpt["method"])
    return ckpt, cfg, run, method


def _features(run, cfg, method):
    size = run.crop_size if run.crop_size != run.image_size else None
    kw = dict(batch_size=cfg.eval.batch_size, device=run.device, mean=run.train_set.mean, std=run.train_set.std,
              size=size, autocast_dtype=AUTOCAST_DTYPES[cfg.train.precision])
    train_x = ev.extract_features(method.backbone, _images(run.train_set), run.eval_train, **kw)
    test_x = ev.extract_features(method.backbone, _images(run.test_set), run.test_indices, **kw)
    train_y = torch.as_tensor(run.train_set.labels[run.eval_train], device=run.device)
    test_y = torch.as_tensor(run.test_set.labels[run.test_indices], device=run.device)
    return train_x, train_y, test_x, test_y


def _last_trained_task(ckpt: dict) -> int:
    """task{t}.pt names its task; a run's checkpoint.pt is at task next_task (trained already when phase "evaluate")."""
    if "task" in ckpt:
        return ckpt["task"]
    return ckpt.get("next_task", 0) - (ckpt.get("phase") != "evaluate")


def _report(name, logits, test_y, run, ckpt, extra: dict | None = None) -> dict:
    per_task = ev.part_accuracies(logits, test_y, run.test_parts)
    result = {"protocol": name, "task": _last_trained_task(ckpt),
              "test_accuracy": ev.accuracy(logits, test_y), "per_task_accuracy": per_task}
    if run.cfg.data.scenario == "domain":  # task j is domain j: the same numbers by domain name
        result["per_domain_accuracy"] = {t.domains[0]: a for t, a in zip(run.tasks, per_task)}
    result.update(extra or {})
    print(json.dumps(result))
    return result


def _domain_subsets(run) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(domain, positions in run.eval_train of its labelled train images, positions in the test rows) per task."""
    if run.cfg.data.scenario != "domain":
        raise ConfigError(f"per_domain=True is invalid for data.scenario={run.cfg.data.scenario!r}; allowed: "
                          "domain-incremental runs only")
    ids = run.train_set.domain_ids[run.eval_train]
    out = []
    for t, part in zip(run.tasks, run.test_parts):
        rows = np.flatnonzero(ids == run.train_set.domains.index(t.domains[0]))
        if len(rows) < 2:
            raise ConfigError(f"train_fraction leaves {len(rows)} labelled {t.domains[0]!r} images; allowed: a fraction "
                              "that keeps at least 2 per domain for per_domain=True")
        out.append((t.domains[0], rows, torch.as_tensor(part, device=run.device)))
    return out


def linear_eval(checkpoint: str, data_dir: str | None = None, mode: str = "features", epochs: int | None = None,
                lr: float | None = None, batch_size: int = 256, momentum: float = 0.0, train_fraction: float | None = None,
                device: str = "auto", out: str | None = None, per_domain: bool = False) -> dict:
    """One linear run on all classes (and domains); per_domain=True adds one run per domain (domain-IL only)."""
    require(mode in ("features", "augmented"), "mode", mode, ("features", "augmented"))
    ckpt, cfg, run, method = _prepare(checkpoint, data_dir, device, train_fraction)
    domains = _domain_subsets(run) if per_domain else []
    if mode == "features":
        train_x, train_y, test_x, test_y = _features(run, cfg, method)

        def fit(rows):
            return ev.linear_probe(train_x[rows], train_y[rows], run.num_classes, epochs=epochs or cfg.eval.linear_epochs,
                                   lr=lr or cfg.eval.linear_lr, batch_size=cfg.eval.linear_batch_size, seed=cfg.train.seed)
        logits = fit(slice(None))(test_x)
        runs = {d: ev.accuracy(fit(torch.as_tensor(rows, device=run.device))(test_x[part]), test_y[part])
                for d, rows, part in domains}
        name = "linear-features"
    else:
        def fit(subset):
            return _augmented_head(run, cfg, method, subset, epochs or 100, lr or 0.1, batch_size, momentum)
        head = fit(run.eval_train)
        heads = {d: fit(run.eval_train[rows]) for d, rows, _ in domains}
        _, _, test_x, test_y = _features(run, cfg, method)
        with torch.no_grad():
            logits = head(test_x)
            runs = {d: ev.accuracy(heads[d](test_x[part]), test_y[part]) for d, _, part in domains}
        name = "linear-augmented"
    result = _report(name, logits, test_y, run, ckpt, {"per_domain_runs": runs} if per_domain else None)
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def _augmented_head(run, cfg, method, subset, epochs, lr, batch_size, momentum) -> torch.nn.Linear:
    """A linear layer trained on random-resized-crop + flip batches of `subset` through the frozen backbone."""
    from loaders import ViewConfig, make_loader

    view = ViewConfig(size=run.crop_size, crop_scale=(0.08, 1.0), jitter_prob=0.0, grayscale_prob=0.0,
                      mean=run.train_set.mean, std=run.train_set.std)
    loader = make_loader(cfg.data.loader, run.train_set, batch_size=min(batch_size, len(subset)), num_views=1,
                         device=run.device, seed=cfg.train.seed, view_configs=[view], subset=subset)
    head = torch.nn.Linear(method.feat_dim, run.num_classes).to(run.device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.6 * epochs), int(0.8 * epochs)], gamma=0.1)
    method.backbone.eval()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for views, labels, _ in loader:
            with torch.no_grad():
                feats = method.backbone(views[0]).float()
            loss = F.cross_entropy(head(feats), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return head


def knn_eval(checkpoint: str, data_dir: str | None = None, k: int = 20, temperature: float = 0.07,
             train_fraction: float | None = None, device: str = "auto", out: str | None = None) -> dict:
    require(k >= 1, "k", k, ">= 1")
    ckpt, cfg, run, method = _prepare(checkpoint, data_dir, device, train_fraction)
    train_x, train_y, test_x, test_y = _features(run, cfg, method)
    logits = ev.knn_predict(train_x, train_y, test_x, run.num_classes, k=k, temperature=temperature)
    result = _report("knn", logits, test_y, run, ckpt)
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
    return result
