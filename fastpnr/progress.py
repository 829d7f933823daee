"""What a run shows while it trains: a tqdm bar of training steps, or one log line per epoch (``train.progress false``).

The bar counts training steps only: the evaluation after a task is shown as its own status ("evaluating task 1/5:
linear probe") and its time is taken out of the bar's rate and ETA. While the bar is up, the run's log lines
(notices such as the CUDA-graph fallback, the after-task accuracies) are printed above it, never into its line.
"""
from __future__ import annotations

import time


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

    def start_epoch(self, task: int, num_tasks: int, epoch: int, epochs: int) -> None:
        if self.bar is not None:
            self.bar.set_description(f"task {task + 1}/{num_tasks} epoch {epoch + 1}/{epochs}")

    def end_epoch(self, task: int, num_tasks: int, epoch: int, epochs: int, steps: int, images: int, seconds: float,
                  means: dict) -> None:
        """Account an epoch's training time; without a bar, print its line (loss, img/s, elapsed, ETA)."""
        self.done += steps
        self.train_seconds += seconds
        self.train_steps += steps
        if self.bar is not None:
            return
        eta = (self.total - self.done) * self.train_seconds / max(self.train_steps, 1)
        loss = f"loss {means['loss']:.4f}" if "loss" in means else "loss n/a"
        ips = images / max(seconds, 1e-9)
        self.sink(f"task {task + 1}/{num_tasks} epoch {epoch + 1}/{epochs} | {loss} | "
                  f"{ips:.{0 if ips >= 10 else 2}f} img/s | elapsed {_clock(time.perf_counter() - self.started)} | "
                  f"train ETA {_clock(eta)}")

    def status(self, text: str) -> None:
        """A phase outside training (evaluation): the bar's description, else a log line."""
        if self.bar is not None:
            self.bar.set_description(text)
        else:
            self.sink(text)

    def resume_training(self) -> None:
        """After an evaluation: leave its time out of the bar's rate and ETA."""
        if self.bar is not None:
            self.bar.unpause()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
