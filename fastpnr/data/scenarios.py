"""Continual scenarios: split a training set into tasks (class-IL, data-IL, domain-IL), as the anchors do (§3.2).

- class: `torch.randperm(num_classes, generator=Generator().manual_seed(seed)).chunk(T)`; the anchors call
  `seed_everything(seed)` then `torch.randperm(num_classes).chunk(T)`, the same stream. num_classes % T == 0.
- data: `random_split` of all training images into T chunks with `Generator().manual_seed(data_seed)` (42, as the
  anchors; `--data.data_split_seed`), independent of the run seed; every chunk has N // T images and the first also the remainder (cassle/utils/pretrain_dataloader.py).
- domain: task t is one domain, in the given order (default for PACS: photo, art_painting, cartoon, sketch; for
  DomainNet the dataset's order, the anchors' real, quickdraw, painting, sketch, infograph, clipart).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fastpnr.errors import ConfigError, DataError, require

SCENARIOS = ("class", "data", "domain")
DATA_SPLIT_SEED = 42
DEFAULT_DOMAIN_ORDER = {"pacs": ("photo", "art_painting", "cartoon", "sketch")}


@dataclass(frozen=True, eq=False)
class Task:
    """Task `index`: its training images (int64 positions into the train dataset), and its classes or domains."""

    index: int
    train_indices: np.ndarray
    classes: list[int] | None = None
    domains: list[str] | None = None


def class_splits(num_classes: int, num_tasks: int, seed: int) -> list[list[int]]:
    """Class ids per task: `torch.randperm(num_classes, generator=manual_seed(seed)).chunk(num_tasks)`."""
    require(num_classes % num_tasks == 0, "num_tasks", num_tasks,
            f"a divisor of the {num_classes} classes (class-IL needs equal class counts per task)")
    perm = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))
    return [chunk.tolist() for chunk in perm.chunk(num_tasks)]


def data_splits(num_images: int, num_tasks: int, seed: int = DATA_SPLIT_SEED) -> list[np.ndarray]:
    """Disjoint chunks of range(num_images), equal to
    `random_split(range(N), [N // T + N % T, N // T, ...], generator=Generator().manual_seed(seed))`."""
    require(num_tasks <= num_images, "num_tasks", num_tasks, f"at most the {num_images} training images")
    lengths = [num_images // num_tasks] * num_tasks
    lengths[0] += num_images - sum(lengths)
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed)).numpy().astype(np.int64)
    return np.split(perm, np.cumsum(lengths)[:-1])


def _domain_order(dataset, num_tasks: int, domain_order) -> list[str]:
    allowed = list(dataset.domains or [])
    if not allowed:
        raise ConfigError(f"scenario='domain' needs a dataset with domains; {dataset.name!r} has none")
    order = list(domain_order) if domain_order is not None else list(DEFAULT_DOMAIN_ORDER.get(dataset.name, allowed))
    absent = [d for d in order if d not in allowed]
    if absent:  # e.g. a DomainNet download without some domains' file lists
        raise ConfigError(f"domain_order={absent[0]!r} is invalid; allowed: {', '.join(allowed)} (the domains found in "
                          f"the {dataset.name} {dataset.split} data; not found: {', '.join(absent)})")
    require(len(set(order)) == len(order), "domain_order", order, "each domain at most once")
    require(num_tasks == len(order), "num_tasks", num_tasks, f"{len(order)} (one task per domain in {order})")
    return order


def check_classes(dataset) -> None:
    """DataError unless the training ``dataset`` has images of at least 2 classes: with one class every probe
    predicts it and every accuracy is 100%. (A class-IL task of one class is fine when the dataset has more: the
    probes are fit and scored over all the classes seen.)"""
    present = np.unique(np.asarray(dataset.labels))
    if len(present) < 2:
        only = f"a single class, {dataset.classes[int(present[0])]!r}" if len(present) else "no labelled images"
        where = f", e.g. {dataset.members[0]}" if len(dataset.members) else ""
        raise DataError(f"dataset {dataset.name!r} split {dataset.split!r} has {only} ({len(dataset)} images{where}); "
                        "allowed: images of at least 2 classes (with one class every accuracy is 100%)")


def make_tasks(scenario: str, dataset, num_tasks: int, seed: int, domain_order=None, *,
               data_seed: int = DATA_SPLIT_SEED) -> list[Task]:
    """Split the training `dataset` (an ImageDataset) into `num_tasks` tasks for `scenario`.

    seed drives the class-IL class order; data-IL uses `data_seed` (42, as the anchors, independent of seed).
    A dataset of one class is refused (``check_classes``).
    """
    require(scenario in SCENARIOS, "scenario", scenario, SCENARIOS)
    require(isinstance(num_tasks, int) and not isinstance(num_tasks, bool) and num_tasks >= 1,
            "num_tasks", num_tasks, "an int >= 1")
    check_classes(dataset)
    labels = np.asarray(dataset.labels)
    if scenario == "class":
        splits = class_splits(len(dataset.classes), num_tasks, seed)
        return [Task(t, np.flatnonzero(np.isin(labels, cls)).astype(np.int64), classes=cls)
                for t, cls in enumerate(splits)]
    if scenario == "data":
        return [Task(t, idx) for t, idx in enumerate(data_splits(len(labels), num_tasks, data_seed))]
    order = _domain_order(dataset, num_tasks, domain_order)
    domain_ids = np.asarray(dataset.domain_ids)
    return [Task(t, np.flatnonzero(domain_ids == dataset.domains.index(d)).astype(np.int64), domains=[d])
            for t, d in enumerate(order)]


def task_test_indices(scenario: str, tasks: list[Task], test_dataset) -> list[np.ndarray]:
    """Each task's part of the test set: its classes (class-IL), its domains (domain-IL), everything (data-IL)."""
    require(scenario in SCENARIOS, "scenario", scenario, SCENARIOS)
    n = len(test_dataset.labels)
    if scenario == "data":
        return [np.arange(n, dtype=np.int64) for _ in tasks]
    if scenario == "class":
        labels = np.asarray(test_dataset.labels)
        return [np.flatnonzero(np.isin(labels, t.classes)).astype(np.int64) for t in tasks]
    ids = np.asarray(test_dataset.domain_ids)
    absent = [d for t in tasks for d in t.domains if d not in test_dataset.domains]
    if absent:
        raise DataError(f"the {test_dataset.name} {test_dataset.split} split has no {absent[0]!r} images (domains found: "
                        f"{', '.join(test_dataset.domains)}); every trained domain needs test images")
    return [np.flatnonzero(np.isin(ids, [test_dataset.domains.index(d) for d in t.domains])).astype(np.int64)
            for t in tasks]


def describe_tasks(tasks: list[Task], dataset) -> dict:
    """JSON-serializable summary for the run folder: per task its size and classes (ids and names) or domains."""
    out = {"dataset": dataset.name, "num_tasks": len(tasks), "tasks": []}
    for t in tasks:
        row = {"index": t.index, "num_train": int(len(t.train_indices))}
        if t.classes is not None:
            row["classes"] = [int(c) for c in t.classes]
            row["class_names"] = [dataset.classes[c] for c in t.classes]
        if t.domains is not None:
            row["domains"] = list(t.domains)
        out["tasks"].append(row)
    return out


def stratified_subset(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int = 42) -> np.ndarray:
    """A ``fraction`` of ``indices`` drawn per class (round(n_c * fraction), at least 1 of each class), sorted.

    The semi-supervised linear evaluation of the anchors (1% / 10% of the labels, stratified, seed 42).
    """
    if fraction >= 1:
        return np.asarray(indices)
    indices = np.asarray(indices)
    classes = np.asarray(labels)[indices]
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(classes):
        members = indices[classes == c]
        k = max(1, int(round(len(members) * fraction)))
        keep.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(keep)) if keep else indices[:0]
