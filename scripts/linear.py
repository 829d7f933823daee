"""fastpnr linear: offline linear evaluation of a saved model.

    fastpnr linear --checkpoint runs/smoke/task1.pt [--mode features|augmented] [--epochs 100] [--data-dir DIR]
    fastpnr linear --checkpoint runs/domainnet/task5.pt --per_domain   # + one run per domain (domain-IL, DomainNet)
"""
from __future__ import annotations

from fastpnr.cli import run_fire


def main(checkpoint: str, data_dir: str | None = None, mode: str = "features", epochs: int | None = None,
         lr: float | None = None, batch_size: int = 256, momentum: float = 0.0, train_fraction: float | None = None,
         device: str = "auto", out: str | None = None, per_domain: bool = False):
    """Linear probe of a checkpoint's frozen backbone; prints and optionally writes (--out) a JSON result.

    --per_domain (domain-IL runs): also one linear run per domain, trained and tested on that domain only.
    """
    from fastpnr.offline_eval import linear_eval

    linear_eval(checkpoint, data_dir=data_dir, mode=mode, epochs=epochs, lr=lr, batch_size=batch_size,
                momentum=momentum, train_fraction=train_fraction, device=device, out=out, per_domain=per_domain)


def cli(argv=None):
    run_fire(main, argv, name="fastpnr linear")


if __name__ == "__main__":
    cli()
