"""fastpnr knn: weighted kNN evaluation (cosine, k=20, T=0.07) of a saved model's frozen backbone.

    fastpnr knn --checkpoint runs/smoke/task1.pt [--k 20] [--temperature 0.07]
"""
from __future__ import annotations

from fastpnr.cli import run_fire


def main(checkpoint: str, data_dir: str | None = None, k: int = 20, temperature: float = 0.07,
         train_fraction: float | None = None, device: str = "auto", out: str | None = None):
    """kNN accuracy of a checkpoint's frozen backbone, on the whole test set and per task."""
    from fastpnr.offline_eval import knn_eval

    knn_eval(checkpoint, data_dir=data_dir, k=k, temperature=temperature, train_fraction=train_fraction,
             device=device, out=out)


def cli(argv=None):
    run_fire(main, argv, name="fastpnr knn")


if __name__ == "__main__":
    cli()
