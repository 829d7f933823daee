"""Offline evaluation of a saved model (``task{t}.pt`` or ``checkpoint.pt``): linear probe or kNN per task.

Both go through the run's own evaluation path (``protocols.Evaluator.rows`` on the run's ``task_data.TaskData``)
with the run's configuration and seed rule (``evaluation.eval_seed``), so with no options the result is the run's figure for that task; the output
carries ``matches_run`` and the run's figure beside its own (read from ``metrics.json`` in the run folder).

Two linear modes:
- ``features`` (default): the continual loop's probe, ``eval.linear_seeds`` fits of a linear classifier on frozen,
  precomputed features (fast);
- ``official``: the anchors' offline protocol (PNR main_linear.py, ``evaluation.train_official_head``): the frozen
  backbone in eval mode, Linear(feat_dim, C) trained with SGD on random-resized-crop + flip batches of the gpu or
  DALI loader, lr by method, momentum 0.0 (PNR; CaSSLe 0.9), batch 256, 100 epochs, lr x0.1 at 60% and 80%.
  ``augmented`` is its former name.

``label_fraction`` keeps a stratified share of the labels per class (the papers' 1% / 10% semi-supervised
evaluation, seed 42). Domain-IL runs also report the accuracy per domain; ``per_domain=True`` adds the anchors'
DomainNet protocol of one more linear run per domain (trained and tested on that domain only, ``per_domain_runs``).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import torch

from . import evaluation as ev
from fastpnr.system.atomic import write_json
from fastpnr.system.checkpoint import load_checkpoint
from fastpnr.config import config_from_dict
from fastpnr.errors import ConfigError, require
from fastpnr.methods import build_method
from fastpnr.system.precision import PARAM_DTYPES
from .protocols import Evaluator
from fastpnr.system.runtime import resolve_auto, setup_process
from fastpnr.data.task_data import TaskData

MODES = ("features", "official", "augmented")
# command-line option -> eval config field, per linear mode (the others are shared: train_fraction, label_fraction)
MODE_OPTIONS = {
    "features": {"epochs": "linear_epochs", "lr": "linear_lr", "batch_size": "linear_batch_size", "seeds": "linear_seeds"},
    "official": {"epochs": "official_epochs", "lr": "official_lr", "batch_size": "official_batch_size",
                 "momentum": "official_momentum", "seeds": "official_seeds"},
    "knn": {"k": "knn_k", "temperature": "knn_temperature"},
}
PROTOCOL_OF_MODE = {"features": "linear", "official": "official", "knn": "knn"}
SHARED_OPTIONS = {"train_fraction": "train_fraction", "label_fraction": "label_fraction"}


def _eval_overrides(mode: str, options: dict) -> dict:
    """{eval field: value} for the options given (not None); an option the mode does not take is an error."""
    fields = {**MODE_OPTIONS[mode], **SHARED_OPTIONS}
    for name, value in options.items():
        require(value is None or name in fields, name, value, f"unset with --mode {mode} (options: {', '.join(fields)})")
    return {fields[k]: v for k, v in options.items() if v is not None}


def _load_run(checkpoint: str, data_dir: str | None, device: str, eval_overrides: dict, progress: bool):
    ckpt = load_checkpoint(checkpoint)
    d = copy.deepcopy(ckpt["config"])
    if data_dir is not None:
        d["data"]["data_dir"] = data_dir
    d["train"]["device"] = device
    d["train"]["progress"] = progress
    d["eval"].setdefault("linear_seeds", 1)  # a run from before eval.linear_seeds fitted one probe per task
    changed = _changed(d["eval"], eval_overrides)
    d["eval"].update(eval_overrides)
    cfg = config_from_dict(d)
    folder = Path(checkpoint).parent if Path(checkpoint).is_file() else Path(checkpoint)
    return ckpt, cfg, folder, changed


class _Offline:
    """What one offline evaluation works on: the run's configuration and folder, its data, its evaluator."""

    def __init__(self, cfg, folder: Path):
        self.cfg, self.out = cfg, folder
        self.device, dist = setup_process(cfg)  # the run's device, threads and determinism: the run's numbers
        self.cfg = cfg = resolve_auto(cfg, self.device)  # a run's config.json holds the precision auto chose
        self.data = TaskData(cfg, dist=dist, device=self.device, log=lambda *a: None)  # nothing written
        self.evaluator = Evaluator(cfg, self.data, dist)


def _prepare(checkpoint, data_dir, device, eval_overrides, progress=False):
    ckpt, cfg, folder, changed = _load_run(checkpoint, data_dir, device, eval_overrides, progress)
    run = _Offline(cfg, folder)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    method = build_method(cfg.method, cfg.model, run.data.num_classes).to(  # as the run (fp64: float64 weights)
        run.device, PARAM_DTYPES[cfg.train.precision], memory_format=memory_format)
    method.load_state_dict(ckpt["method"])
    return ckpt, cfg, run, method, changed


def _last_trained_task(ckpt: dict) -> int:
    """task{t}.pt names its task; a run's checkpoint.pt is at task next_task (trained already when phase "evaluate")."""
    if "task" in ckpt:
        return ckpt["task"]
    return ckpt.get("next_task", 0) - (ckpt.get("phase") != "evaluate")


def _run_figures(run, protocol: str, task: int) -> dict | None:
    """The run's own row and test accuracy of ``protocol`` after ``task`` (metrics.json beside the checkpoint)."""
    path = run.out / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    rows = m.get("matrices", {}).get(protocol, [])
    tests = m.get("test_accuracy_by_protocol", {}).get(protocol, [])
    if task < 0 or task >= min(len(rows), len(tests)):
        return None
    return {"per_task_accuracy": rows[task], "test_accuracy": tests[task]}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=0.0, abs_tol=1e-6)


def _against_run(run, protocol: str, task: int, s: dict, changed: dict) -> dict:
    """matches_run (None: the run has no figure for it) and the run's figure beside this one."""
    theirs = _run_figures(run, protocol, task)
    out = {"matches_run": None, "run_test_accuracy": None, "run_per_task_accuracy": None,
           "options_differing_from_run": changed}
    if theirs is not None:
        same = _same(s["test_accuracy"], theirs["test_accuracy"]) and len(s["row"]) == len(theirs["per_task_accuracy"]) \
            and all(_same(a, b) for a, b in zip(s["row"], theirs["per_task_accuracy"]))
        out.update(matches_run=same, run_test_accuracy=theirs["test_accuracy"],
                   run_per_task_accuracy=theirs["per_task_accuracy"])
    return out


def _changed(run_cfg_eval: dict, overrides: dict) -> dict:
    """{field: [run's value, this value]} of the overrides that differ from the run's configuration."""
    return {k: [run_cfg_eval.get(k), v] for k, v in overrides.items() if run_cfg_eval.get(k) != v}


def _report(run, ckpt, protocol: str, mode: str, fits, changed: dict, extra: dict | None = None) -> dict:
    s = ev.summarize_fits(fits)
    task = _last_trained_task(ckpt)
    result = {"protocol": protocol, "mode": mode, "task": task, "test_accuracy": s["test_accuracy"],
              "test_accuracy_std": s["test_accuracy_std"], "per_task_accuracy": s["row"],
              "per_task_accuracy_std": s["row_std"], "fits": len(fits),
              "seeds": [ev.eval_seed(run.cfg.train.seed, task, r) for r in range(len(fits))],
              "train_images": int(len(run.data.probe_train_indices())), "label_fraction": run.cfg.eval.label_fraction}
    if run.cfg.data.scenario == "domain":  # task j is domain j: the same numbers by domain name
        result["per_domain_accuracy"] = {t.domains[0]: a for t, a in zip(run.data.tasks, s["row"])}
    result.update(extra or {})
    result.update(_against_run(run, protocol, task, s, changed))
    print(json.dumps(result))
    return result


def _domain_subsets(data: TaskData) -> list[tuple[str, np.ndarray, torch.Tensor]]:
    """(domain, its labelled train images (dataset indices), positions in the test rows) per task."""
    if data.cfg.data.scenario != "domain":
        raise ConfigError(f"per_domain=True is invalid for data.scenario={data.cfg.data.scenario!r}; allowed: "
                          "domain-incremental runs only")
    train_idx = data.probe_train_indices()
    ids = data.train_set.domain_ids[train_idx]
    out = []
    for t, part in zip(data.tasks, data.test_parts):
        rows = np.flatnonzero(ids == data.train_set.domains.index(t.domains[0]))
        if len(rows) < 2:
            raise ConfigError(f"--train_fraction leaves {len(rows)} labelled {t.domains[0]!r} images; allowed: a "
                              "fraction that keeps at least 2 per domain with --per_domain")
        out.append((t.domains[0], train_idx[rows], torch.as_tensor(part, device=data.device)))
    return out


def _per_domain_runs(evaluator: Evaluator, method, mode: str, task: int) -> dict:
    """{domain: accuracy on its test images of a probe trained on its train images only} (mean over the fits)."""
    data = evaluator.data
    extract = evaluator.feature_extractor(method)
    test_x = extract(data.test_set, data.test_indices)
    test_y = torch.as_tensor(data.test_set.labels[data.test_indices], device=data.device)
    e, runs = data.cfg.eval, {}
    for domain, subset, part in _domain_subsets(data):
        if mode == "features":
            train_x = extract(data.train_set, subset)
            train_y = torch.as_tensor(data.train_set.labels[subset], device=data.device)
            predict = [evaluator.fit_linear(train_x, train_y, task, r) for r in range(e.linear_seeds)]
        else:
            predict = [evaluator.fit_official(method, subset, task, r) for r in range(e.official_seeds)]
        with torch.no_grad():
            runs[domain] = float(np.mean([ev.accuracy(p(test_x[part]), test_y[part]) for p in predict]))
    return runs


def linear_eval(checkpoint: str, data_dir: str | None = None, mode: str = "features", epochs: int | None = None,
                lr: float | None = None, batch_size: int | None = None, momentum: float | None = None,
                seeds: int | None = None, train_fraction: float | None = None, label_fraction: float | None = None,
                device: str = "auto", out: str | None = None, per_domain: bool = False, progress: bool = True) -> dict:
    """One linear evaluation on all classes (and domains) of the run's model after its task; options left unset
    take the run's values. per_domain=True adds one run per domain (domain-IL only)."""
    require(mode in MODES, "mode", mode, MODES)
    mode = "official" if mode == "augmented" else mode
    overrides = _eval_overrides(mode, {"epochs": epochs, "lr": lr, "batch_size": batch_size, "momentum": momentum,
                                       "seeds": seeds, "train_fraction": train_fraction, "label_fraction": label_fraction})
    ckpt, cfg, run, method, changed = _prepare(checkpoint, data_dir, device, overrides, progress)
    protocol, task = PROTOCOL_OF_MODE[mode], _last_trained_task(ckpt)
    extra = {"per_domain_runs": _per_domain_runs(run.evaluator, method, mode, task)} if per_domain else {}
    if mode == "official":
        extra["lr"] = cfg.eval.official_lr or ev.OFFICIAL_LINEAR_LR.get(cfg.method.name)
    fits = run.evaluator.rows(task, method, protocols=(protocol,))[protocol]
    result = _report(run, ckpt, protocol, mode, fits, changed, extra)
    if out:
        write_json(out, result)
    return result


def knn_eval(checkpoint: str, data_dir: str | None = None, k: int | None = None, temperature: float | None = None,
             train_fraction: float | None = None, label_fraction: float | None = None, device: str = "auto",
             out: str | None = None) -> dict:
    """Weighted kNN of the run's model after its task; options left unset take the run's values."""
    require(k is None or k >= 1, "k", k, ">= 1")
    overrides = _eval_overrides("knn", {"k": k, "temperature": temperature, "train_fraction": train_fraction,
                                        "label_fraction": label_fraction})
    ckpt, cfg, run, method, changed = _prepare(checkpoint, data_dir, device, overrides)
    fits = run.evaluator.rows(_last_trained_task(ckpt), method, protocols=("knn",))["knn"]
    result = _report(run, ckpt, "knn", "knn", fits, changed)
    if out:
        write_json(out, result)
    return result
