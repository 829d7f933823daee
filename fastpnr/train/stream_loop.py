"""The loop's part of the stream scenario (``data.scenario stream``; the scenario itself: ``fastpnr.data.stream``).

The stream is the loop's one task of one epoch. After every step (``Trainer.train_epoch``'s ``after_step``, outside
the step) ``StreamRun``:

1. sets the learning rate of the next step (``stream.set_stream_lr``: warm-up, then constant);
2. with ``train.boundaries known``, calls ``regularizer.begin_task(method, c)`` when the next step is chunk c's first;
   a strategy with ``stream_step`` (the frozen-model refresh every ``regularizer.refresh_every`` steps, CLA) is told
   the step count;
3. every ``eval.every_steps`` steps and after the last, evaluates every chunk's test images (kNN; the linear probe
   too with ``eval.stream_linear``): ``metrics["stream"]`` (``fastpnr.eval.stream_eval``), TensorBoard scalars
   ``stream/*``, ``stream_accuracy.png``; then a checkpoint at that step, so a kill loses at most one interval and a
   resume continues from the step (the loop's mid-epoch resume).
"""
from __future__ import annotations

import numpy as np

from fastpnr.data.stream import check_stream_length, chunk_steps, set_stream_lr, steps_per_batch
from fastpnr.eval import stream_eval

STREAM_PNG = "stream_accuracy.png"


class StreamRun:
    """The stream's evaluation points and per-step hooks of one ``ContinualRun`` (``run``)."""

    def __init__(self, run):
        self.run, cfg = run, run.cfg
        self.total = run.steps[0]
        check_stream_length(self.total, cfg.eval.every_steps)
        per_chunk = chunk_steps([len(t) for t in run.data.task_train], cfg.optim.batch_size, steps_per_batch(cfg))
        starts = np.concatenate([[0], np.cumsum(per_chunk)])
        self.chunk_starts = [int(min(s, self.total)) for s in starts]  # train.steps_per_epoch may cut the stream
        self.protocols = ("knn", "linear") if cfg.eval.stream_linear else ("knn",)
        self.stop_after_step = getattr(run, "stop_stream_after_step", None)  # tests: a kill after this step's checkpoint

    def metrics(self) -> dict:
        return self.run.metrics.setdefault("stream", stream_eval.new_stream_metrics(self.chunk_starts,
                                                                                   self.run.cfg.eval.every_steps))

    def after_step(self, trainer, task: int, epoch: int, start_step: int):
        """The ``after_step(done)`` of the stream's epoch (from ``start_step`` when resumed inside it)."""
        run, cfg = self.run, self.run.cfg
        set_stream_lr(trainer.optimizer, start_step, cfg.optim)

        def hook(done: int) -> None:
            set_stream_lr(trainer.optimizer, done, cfg.optim)
            was_active = run.regularizer.active
            if cfg.train.boundaries == "known" and done in self.chunk_starts[1:-1]:
                run.regularizer.begin_task(run.method, self.chunk_starts.index(done))
            stream_step = getattr(run.regularizer, "stream_step", None)
            if stream_step is not None:
                stream_step(run.method, done)
            if trainer.graph is not None and run.regularizer.active != was_active:
                trainer.graph.recapture()  # the step's structure changed (the frozen model's forward joins it)
            if done % cfg.eval.every_steps == 0 or done == self.total:
                self.evaluate(done)
                if done < self.total:
                    run._save(task, epoch, trainer.optimizer, trainer, next_step=done)
                    if self.stop_after_step == done:
                        from .continual import _Interrupted

                        raise _Interrupted()

        return hook

    def evaluate(self, step: int) -> None:
        """Every chunk's accuracy after ``step`` steps: metrics, TensorBoard, the PNG, one log line."""
        run = self.run
        run._eval_label = f"evaluating at step {step}"
        rows = run.evaluator.rows(0, run.method, protocols=self.protocols)
        run.method.train()  # the loop's epoch goes on (the evaluation left the backbone in train mode; heads too)
        run.regularizer.train()
        point = stream_eval.record_point(self.metrics(), step, rows)
        for name in rows:
            run._scalar(f"stream/{name}_seen_average", point["seen_average"][name], step)
            run._scalar(f"stream/{name}_average", point["average"][name], step)
            for j, a in enumerate(point["accuracy"][name]):
                run._scalar(f"stream/{name}_chunk{j}", a, step)
        run.dist.main_only(self.plot)()
        run.log(stream_eval.point_line(point, "knn"))
        if run.progress is not None:
            run.progress.resume_training()

    def plot(self) -> None:
        cfg = self.run.cfg
        stream_eval.plot_stream({f"{cfg.method.name}+{cfg.regularizer.name}": self.metrics()["curve"]},
                                self.run.out / STREAM_PNG, "knn", self.chunk_starts)

    def record_final(self) -> None:
        """After the final evaluation (every protocol, one row over the chunks): the stream's summaries replace the
        task-based ones: A_T the mean over all chunks of ``eval.protocol``, the average accuracy over the stream and
        the forgetting from the kNN curve."""
        m = self.run.metrics
        summary = self.metrics()["summary"]["knn"]
        m["final_average_accuracy"] = m["average_accuracy"] = float(np.mean(m["accuracy_matrix"][-1]))
        m["average_incremental_accuracy"] = summary["average_accuracy_over_stream"]
        m["forgetting"] = summary["forgetting"]
