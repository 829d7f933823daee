"""What a run shows while it trains: a tqdm bar of training steps, or one log line per epoch (``train.progress false``).

The bar counts training steps only: the evaluation after a task is shown as its own status ("evaluating task 0
(1/5): linear probe") and its time is taken out of the bar's rate and ETA, not out of its elapsed clock (wall time,
which never goes back). While the bar is up, the run's log lines (notices such as the CUDA-graph fallback, the
after-task accuracies) are printed above it, never into its line.

Tasks are numbered from 0 everywhere, as in the run folder (``task0.pt``, the rows of ``metrics.json``, "after task
0"); progress lines add the position among the run's tasks: ``task 0 (1/5)`` (``task_label``).
"""
from __future__ import annotations

import time


def task_label(task: int, num_tasks: int) -> str:
    """"task 0 (1/5)": the task's index (from 0, as task{t}.pt and the metrics) and its position among the tasks."""
    return f"task {task} ({task + 1}/{num_tasks})"


def position_label(task: int, num_tasks: int, epoch: int, num_epochs: int, step: int = 0, phase: str | None = None) -> str:
    """"task 1 (2/2) epoch 1/3, after step 5": where a checkpoint stands (``epoch`` from 0; ``step``: the steps
    already done in that epoch, 0 at its start; ``phase``: the training phase of a task that has several, e.g.
    POCON's "expert" and "main": "epoch 1/4 (expert)"). The bar, the signal stop and the resume print the same label."""
    return (f"{task_label(task, num_tasks)} epoch {epoch + 1}/{num_epochs}" + (f" ({phase})" if phase else "")
            + (f", after step {step}" if step else ""))


class TrainProgress:
    """The progress display of a run of ``total_steps`` training steps, ``done_steps`` of them already done."""

    def __init__(self, total_steps: int, done_steps: int, enabled: bool, log=print):
        self.sink = log
        self.total, self.done = total_steps, done_steps
        self.bar = _bar(total_steps, done_steps) if enabled else None
        self.started = time.perf_counter()
        self.train_seconds, self.train_steps = 0.0, 0  # this session's training only (the ETA's rate)

    def log(self, msg: str) -> None:
        """Print ``msg`` above the bar (tqdm clears the bar, prints, redraws it)."""
        if self.bar is None:
            self.sink(msg)
        elif self.sink is print:
            self.bar.write(str(msg))
        else:
            with self.bar.external_write_mode():
                self.sink(msg)

    def start_epoch(self, task: int, num_tasks: int, epoch: int, epochs: int, phase: str | None = None) -> None:
        if self.bar is not None:
            self.bar.set_description(position_label(task, num_tasks, epoch, epochs, phase=phase))

    def end_epoch(self, task: int, num_tasks: int, epoch: int, epochs: int, steps: int, images: int, seconds: float,
                  means: dict, phase: str | None = None) -> None:
        """Account an epoch's training time; without a bar, print its line (loss, img/s, elapsed, ETA)."""
        self.done += steps
        self.train_seconds += seconds
        self.train_steps += steps
        if self.bar is not None:
            return
        eta = (self.total - self.done) * self.train_seconds / max(self.train_steps, 1)
        loss = f"loss {means['loss']:.4f}" if "loss" in means else "loss n/a"
        ips = images / max(seconds, 1e-9)
        self.sink(f"{position_label(task, num_tasks, epoch, epochs, phase=phase)} | {loss} | "
                  f"{ips:.{0 if ips >= 10 else 2}f} img/s | elapsed {_clock(time.perf_counter() - self.started)} | "
                  f"train ETA {_clock(eta)}")

    def status(self, text: str) -> None:
        """A phase outside training (evaluation): the bar's description, else a log line."""
        if self.bar is not None:
            self.bar.set_description(text)
        else:
            self.sink(text)

    def resume_training(self) -> None:
        """After an evaluation: leave its time out of the bar's rate and ETA, and keep it in the elapsed clock.

        tqdm's rate is an EMA of (steps, seconds) between two refreshes, the seconds measured from ``last_print_t``:
        restarting that clock drops the evaluation from the next interval. (``tqdm.unpause`` also moves ``start_t``
        forward, which turns the elapsed clock back by the evaluation's time.)"""
        if self.bar is not None and not self.bar.disable:
            self.bar.last_print_t = self.bar._time()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
