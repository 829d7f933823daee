"""The evaluation protocols of a run: one ``Evaluator`` per run, built from the config, a ``TaskData`` and ``dist``.

``Evaluator.rows(task, method)`` is the one path of every probe: the loop after each task (task -1: the random-init
model) and ``fastpnr linear`` / ``fastpnr knn`` on a saved model. Per protocol it returns one
``(per-task accuracies, whole-test accuracy)`` pair per fit; fit r after task t is seeded
``evaluation.eval_seed(train.seed, t, r)``, so the offline tools reproduce the loop's figures exactly.

Protocols: ``linear`` (probes on frozen, precomputed features), ``knn`` (weighted kNN), ``online`` and
``momentum_online`` (the heads trained beside the backbone), ``official`` (the anchors' offline protocol: a head
trained on augmented batches, ``evaluation.train_official_head``). What is recorded of the rows (metrics.json) is
``fastpnr.run.metrics``'s.
"""
from __future__ import annotations

import torch

from fastpnr.system import distributed
from . import evaluation as ev
from fastpnr.errors import require
from fastpnr.data.task_data import TaskData, image_array
from fastpnr.system.precision import autocast_dtype

def loop_protocols(cfg, method) -> tuple:
    """The protocols the loop evaluates after each task: linear, kNN, the online probes where train.online_probe
    trains them (momentum_online: MoCo/BYOL's momentum classifier), official when eval.protocol is official."""
    probes = () if cfg.train.online_probe == "off" else ("online",) + (
        ("momentum_online",) if method.momentum_classifier is not None else ())
    return ("linear", "knn") + probes + (("official",) if cfg.eval.protocol == "official" else ())


def _quiet(_what: str) -> None:
    pass


class Evaluator:
    """The probes of one run on its ``TaskData``; ``status`` is told each phase ("features", "linear probe", ...)."""

    def __init__(self, cfg, data: TaskData, dist=None, status=_quiet):
        self.cfg, self.data, self.status = cfg, data, status
        self.dist = dist if dist is not None else distributed.SINGLE
        self.device = data.device

    def rows(self, task: int, method, protocols=None) -> dict:
        """{protocol: [(per-task accuracies, whole-test accuracy) per fit]} of ``method``'s backbone after ``task``.

        ``protocols`` default: ``loop_protocols`` (linear, knn, the trained online probes, official when
        ``eval.protocol`` is official)."""
        cfg, data = self.cfg, self.data
        protocols = protocols or loop_protocols(cfg, method)
        extract = self.feature_extractor(method)
        self.status("features")
        test_x = extract(data.test_set, data.test_indices)
        test_y = torch.as_tensor(data.test_set.labels[data.test_indices], device=self.device)
        logits: dict[str, list] = {}
        train_idx = data.probe_train_indices()
        if {"linear", "knn"} & set(protocols):
            train_x = extract(data.train_set, train_idx)
            train_y = torch.as_tensor(data.train_set.labels[train_idx], device=self.device)
        if "linear" in protocols:
            self.status("linear probe")
            logits["linear"] = [self.fit_linear(train_x, train_y, task, r)(test_x) for r in range(cfg.eval.linear_seeds)]
        if "knn" in protocols:
            self.status("kNN")
            logits["knn"] = [ev.knn_predict(train_x, train_y, test_x, data.num_classes, k=cfg.eval.knn_k,
                                            temperature=cfg.eval.knn_temperature)]
        if "online" in protocols:
            with torch.no_grad():
                logits["online"] = [method.classifier(test_x.to(method.classifier.weight.dtype))]  # fp64 heads
        if "momentum_online" in protocols:  # the anchors' momentum_val_acc1: the EMA backbone's own probe
            ema_x = self.feature_extractor(method, method.momentum_backbone)(data.test_set, data.test_indices)
            with torch.no_grad():
                logits["momentum_online"] = [method.momentum_classifier(ema_x.to(method.classifier.weight.dtype))]
        if "official" in protocols:
            self.status("official linear protocol")
            heads = [self.fit_official(method, train_idx, task, r) for r in range(cfg.eval.official_seeds)]
            with torch.no_grad():
                logits["official"] = [head(test_x) for head in heads]
        rows = {name: [(ev.part_accuracies(lg, test_y, data.test_parts), ev.accuracy(lg, test_y)) for lg in fits]
                for name, fits in logits.items()}
        return self.dist.broadcast_object(rows)  # the probes run on every rank; all keep rank 0's numbers

    def feature_extractor(self, method, backbone=None):
        """``extract(dataset, indices)``: the (N, D) eval-mode features of ``backbone`` (default ``method.backbone``),
        centre-resized to the training crop size when that differs from the image size."""
        cfg, data = self.cfg, self.data
        size = data.crop_size if data.crop_size != data.image_size else None
        kw = dict(batch_size=cfg.eval.batch_size, device=self.device, mean=data.train_set.mean, std=data.train_set.std,
                  size=size, autocast_dtype=autocast_dtype(cfg.train.precision, self.device))
        # torchrun: whole eval batches dealt to the ranks, features gathered (each batch computed as in one process)
        return lambda ds, idx: self.dist.map_batches(
            lambda part: ev.extract_features(method.backbone if backbone is None else backbone, image_array(ds), part, **kw),
            idx, cfg.eval.batch_size)

    def fit_linear(self, train_x, train_y, task: int, repeat: int):
        """Fit ``repeat`` of the linear probe after ``task`` (its seed: ``evaluation.eval_seed``); returns the head."""
        e = self.cfg.eval
        return ev.linear_probe(train_x, train_y, self.data.num_classes, epochs=e.linear_epochs, lr=e.linear_lr,
                               batch_size=e.linear_batch_size, weight_decay=e.linear_weight_decay,
                               seed=ev.eval_seed(self.cfg.train.seed, task, repeat))

    def fit_official(self, method, subset, task: int, repeat: int):
        """The official protocol's head (evaluation.train_official_head) on augmented batches of ``subset``."""
        e, cfg = self.cfg.eval, self.cfg
        seed = ev.eval_seed(cfg.train.seed, task, repeat)
        loader = self.data.official_loader(subset, seed % 2 ** 31)
        lr = e.official_lr or ev.OFFICIAL_LINEAR_LR.get(cfg.method.name)
        require(lr is not None, "eval.official_lr", e.official_lr, f"a value for method {cfg.method.name!r} (no anchor lr)")
        return ev.train_official_head(method.backbone, loader, method.feat_dim, self.data.num_classes, e.official_epochs,
                                      lr, e.official_momentum, seed, autocast_dtype(cfg.train.precision, self.device),
                                      progress=cfg.train.progress)
