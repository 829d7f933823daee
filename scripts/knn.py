"""fastpnr knn: weighted kNN evaluation of a saved model's frozen backbone, through the run's evaluation path.

    fastpnr knn --checkpoint runs/smoke/task1.pt [--k 20] [--temperature 0.07]
"""
from __future__ import annotations

from fastpnr.cli import run_fire


def main(checkpoint: str, data_dir: str | None = None, k: int | None = None, temperature: float | None = None,
         train_fraction: float | None = None, label_fraction: float | None = None, device: str = "auto",
         out: str | None = None):
    """kNN accuracy of a checkpoint's frozen backbone, on the whole test set and per task; unset options take the
    run's eval.knn_k / eval.knn_temperature (so the result matches the run's kNN figure: "matches_run")."""
    from fastpnr.eval.offline_eval import knn_eval

    knn_eval(checkpoint, data_dir=data_dir, k=k, temperature=temperature, train_fraction=train_fraction,
             label_fraction=label_fraction, device=device, out=out)


def cli(argv=None):
    run_fire(main, argv, name="fastpnr knn")


if __name__ == "__main__":
    cli()
