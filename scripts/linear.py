"""fastpnr linear: offline linear evaluation of a saved model, through the run's own evaluation path.

    fastpnr linear --checkpoint runs/smoke/task1.pt                  # the run's probe: reproduces its figure
    fastpnr linear --checkpoint runs/in100/task4.pt --mode official  # the anchors' protocol (PNR main_linear.py)
    fastpnr linear --checkpoint runs/smoke/task1.pt --label_fraction 0.01   # semi-supervised: 1% of the labels
    fastpnr linear --checkpoint runs/domainnet/task5.pt --per_domain   # + one run per domain (domain-IL, DomainNet)
"""
from __future__ import annotations

from fastpnr.cli import run_fire


def main(checkpoint: str, data_dir: str | None = None, mode: str = "features", epochs: int | None = None,
         lr: float | None = None, batch_size: int | None = None, momentum: float | None = None,
         seeds: int | None = None, train_fraction: float | None = None, label_fraction: float | None = None,
         device: str = "auto", out: str | None = None, per_domain: bool = False, progress: bool = True):
    """Linear probe of a checkpoint's frozen backbone; prints and optionally writes (--out) a JSON result.

    Options left unset take the run's eval.* values, so the result reproduces the run's figure for that task
    ("matches_run": true, with "run_test_accuracy" beside "test_accuracy"); set ones are listed in
    "options_differing_from_run".
    --mode features|official: the run's feature probe (eval.linear_*), or the anchors' offline protocol
        (eval.official_*: SGD lr by method unless --lr, momentum 0, batch 256, 100 epochs, lr x0.1 at 60%/80%,
        on augmented views); augmented: the former name of official (the same protocol).
    --seeds N: probe fits (mean and std reported); --label_fraction F: stratified share of the labels per class.
    --per_domain (domain-IL runs): also one linear run per domain, trained and tested on that domain only.
    """
    from fastpnr.eval.offline_eval import linear_eval

    linear_eval(checkpoint, data_dir=data_dir, mode=mode, epochs=epochs, lr=lr, batch_size=batch_size,
                momentum=momentum, seeds=seeds, train_fraction=train_fraction, label_fraction=label_fraction,
                device=device, out=out, per_domain=per_domain, progress=progress)


def cli(argv=None):
    run_fire(main, argv, name="fastpnr linear")


if __name__ == "__main__":
    cli()
