"""A run's metrics: what the loop records of each task's evaluation, and the files it writes from them.

``metrics`` is one dict, kept in every checkpoint and written as ``metrics.json``: per protocol the accuracy matrix
(after task i, on task j; percent), its std and its values per probe fit, the whole-test accuracy; the accuracy
matrix of ``eval.protocol`` with A_T, the average incremental accuracy, forgetting and (with the random-init row)
forward transfer; per task its training time over every attempt (``task_time_s``; each attempt's share in
``task_time_s_by_attempt``; ``TaskClock``), images per second, world size and per-rank batch; each task's training
steps (``train_steps_by_task``, known from the start: a study's ETA).
``accuracy_matrix.csv`` and ``accuracy_matrix.png`` (heatmap) go beside it.
"""
from __future__ import annotations

import time
from pathlib import Path

from fastpnr.eval import evaluation as ev
from fastpnr.system.atomic import write_json


def new_metrics() -> dict:
    return {"accuracy_matrix": [], "test_accuracy": [], "matrices": {}, "task_time_s": [], "task_time_s_by_attempt": [],
            "images_per_second": []}


class TaskClock:
    """A task's training time over its attempts (processes): the seconds of the earlier attempts, as their last
    checkpoint recorded them, and this attempt's, counted from its start; the images trained on in all of them.
    (What an attempt trained after its last checkpoint is trained again by the next one, and counted there.)"""

    def __init__(self, task: int, earlier_seconds=(), images: int = 0):
        self.task, self.earlier, self.images = task, [float(s) for s in earlier_seconds], int(images)
        self.started = time.perf_counter()

    @classmethod
    def resumed(cls, task: int, state: dict | None) -> "TaskClock":
        """The clock of ``task``, continuing a checkpoint's ``state`` when it is of the same task."""
        if state is None or state.get("task") != task:
            return cls(task)
        return cls(task, state["seconds"], state["images"])

    def state(self) -> dict:
        """{"task", "seconds": one entry per attempt, the last one running, "images"} (checkpointed)."""
        return {"task": self.task, "seconds": [*self.earlier, time.perf_counter() - self.started], "images": self.images}


def record_task_training(m: dict, clock: dict, world_size: int, per_rank_batch_size: int) -> None:
    """A trained task's time (``TaskClock.state``): task_time_s = the sum over its attempts, task_time_s_by_attempt
    the attempts' seconds, images_per_second = its images over that sum (a run begun before per-attempt times were
    kept has one attempt on record for each earlier task); the processes it trained on and their batch."""
    by_attempt = m.setdefault("task_time_s_by_attempt", [[s] for s in m["task_time_s"]])
    total = sum(clock["seconds"])
    by_attempt.append(list(clock["seconds"]))
    m["task_time_s"].append(total)
    m["images_per_second"].append(clock["images"] / max(total, 1e-9))
    m.setdefault("world_size", []).append(world_size)
    m.setdefault("per_rank_batch_size", []).append(per_rank_batch_size)


def record_config_changes(m: dict, task: int, epoch: int, phase: str, changes: dict) -> None:
    """A resume's changes of settings that change the numbers (allowed by --allow-config-change), on record:
    metrics.json ``resume_config_changes``, one entry per such resume."""
    if changes:
        m.setdefault("resume_config_changes", []).append(
            {"task": task, "epoch": epoch, "phase": phase, "changes": {k: [old, new] for k, (old, new) in changes.items()}})


def record_random_init(m: dict, rows: dict, protocol: str) -> float:
    """The untrained model's accuracy per task (b_j, the reference of forward transfer, anchors §3.3); returns the
    whole-test accuracy of ``protocol``."""
    summaries = {name: ev.summarize_fits(fits) for name, fits in rows.items()}
    m["random_init_accuracy"] = {name: s["row"] for name, s in summaries.items()}
    return summaries[protocol]["test_accuracy"]


def record_task(m: dict, rows: dict, protocol: str, num_corrupt: int, corrupt_images: list, eval_time_s: float) -> None:
    """Append one task's evaluation (``Evaluator.rows``) to the metrics; refresh the matrix of ``protocol`` and the
    summaries."""
    for name, fits in rows.items():
        _record_fits(m, name, ev.summarize_fits(fits))
    m["accuracy_matrix"] = m["matrices"][protocol]
    m["accuracy_matrix_std"] = m["matrices_std"][protocol]
    m["test_accuracy"] = m["test_accuracy_by_protocol"][protocol]
    m.update(_summaries(m["accuracy_matrix"], m.get("random_init_accuracy", {}).get(protocol)))
    m["num_corrupt"] = num_corrupt
    m["corrupt_images"] = corrupt_images
    m["eval_time_s"] = m.get("eval_time_s", []) + [eval_time_s]


def _record_fits(m: dict, name: str, s: dict) -> None:
    """Append one task's summarized probe fits of protocol ``name`` to the metrics (means, stds, values per fit)."""
    m["matrices"].setdefault(name, []).append(s["row"])
    m.setdefault("matrices_std", {}).setdefault(name, []).append(s["row_std"])
    m.setdefault("test_accuracy_by_protocol", {}).setdefault(name, []).append(s["test_accuracy"])
    m.setdefault("test_accuracy_std_by_protocol", {}).setdefault(name, []).append(s["test_accuracy_std"])
    per_fit = m.setdefault("matrices_by_fit", {}).setdefault(name, [[] for _ in s["rows"]])
    for matrix, row in zip(per_fit, s["rows"]):
        matrix.append(row)


def _summaries(matrix, random_init) -> dict:
    """A_T (also as average_accuracy, its old name), average incremental accuracy, forgetting, forward transfer."""
    cm = ev.ContinualMetrics(matrix)
    out = {"final_average_accuracy": cm.final_average_accuracy(), "average_accuracy": cm.final_average_accuracy(),
           "average_incremental_accuracy": cm.average_incremental_accuracy(), "forgetting": cm.forgetting()}
    if random_init is not None:
        out["forward_transfer"] = cm.forward_transfer(random_init)
    return out


def task_line(m: dict, task: int, protocol: str) -> str:
    """The log line after a task: the test accuracy of ``protocol`` (± over fits), its row, the other protocols."""
    row = ", ".join(f"{a:.1f}" for a in m["accuracy_matrix"][-1])
    others = " | ".join(f"{k} {v[-1]:.2f}%" for k, v in m["test_accuracy_by_protocol"].items() if k != protocol)
    return (f"\nafter task {task}: {protocol} test acc {m['test_accuracy'][-1]:.2f}% "
            f"(± {m['test_accuracy_std_by_protocol'][protocol][-1]:.2f}) | per task [{row}] | {others}")


def write_metrics(out: Path, metrics: dict, cfg) -> None:
    """metrics.json, accuracy_matrix.csv and accuracy_matrix.png (the heatmap, with the std when fits differ)."""
    m = dict(metrics)
    m["protocol"] = cfg.eval.protocol
    m["num_tasks"] = cfg.data.num_tasks
    m["probe_fits"] = {name: len(v) for name, v in m.get("matrices_by_fit", {}).items()}
    write_json(out / "metrics.json", m)
    with open(out / "accuracy_matrix.csv", "w") as f:
        T = cfg.data.num_tasks
        f.write("after_task," + ",".join(f"task{j}" for j in range(T)) + "\n")
        for i, row in enumerate(m["accuracy_matrix"]):
            f.write(f"{i}," + ",".join(f"{a:.4f}" for a in row) + "\n")
    std = m.get("accuracy_matrix_std")
    ev.save_heatmap(m["accuracy_matrix"], out / "accuracy_matrix.png",
                    title=f"{cfg.method.name}+{cfg.regularizer.name}: {cfg.eval.protocol} accuracy (%)",
                    std=std if std and any(v for r in std for v in r) else None)


def summary(m: dict) -> str:
    """The run's closing lines: the accuracy matrix, A_T, forgetting, forward transfer, final test accuracy."""
    lines = ["accuracy matrix (%), rows: after task i, columns: task j"]
    for i, row in enumerate(m["accuracy_matrix"]):
        lines.append(f"  after {i}: " + "  ".join(f"{a:6.2f}" for a in row))
    fwt = f"  forward transfer {m['forward_transfer']:.2f}" if m.get("forward_transfer") is not None else ""
    lines.append(f"final average accuracy A_T {m['average_accuracy']:.2f}%  forgetting {m['forgetting']:.2f}{fwt}  "
                 f"final test accuracy {m['test_accuracy'][-1]:.2f}%")
    return "\n".join(lines)
