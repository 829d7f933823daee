"""fastpnr compare: continual runs side by side (final accuracy, A_T, forgetting, forward transfer, img/s, time).

    fastpnr compare runs/simclr-ft runs/simclr-cassle runs/simclr-pnr [--protocol knn] [--out cmp.md] [--plot cmp.png]
"""
from __future__ import annotations

from fastpnr.cli import run_fire


def main(*runs: str, protocol: str | None = None, out: str | None = None, plot: str | None = None):
    """Print a markdown table of the runs (folders written by `fastpnr train`); protocol: linear, knn or online
    (default each run's own); out: also write the table (.md, .json with the curves, or .csv); plot: a .png of the
    test accuracy after each task, one line per run."""
    from fastpnr.study.compare import check_outputs, markdown_table, plot_curves, summarize, write_table
    from fastpnr.errors import ConfigError

    if not runs:
        raise ConfigError("runs=() is invalid; allowed: one or more run folders written by fastpnr train")
    check_outputs(out, plot)
    rows = [summarize(r, protocol) for r in runs]
    print(markdown_table(rows))
    if out is not None:
        print(f"wrote {write_table(rows, out)}")
    if plot is not None:
        print(f"wrote {plot_curves(rows, plot)}")


def cli(argv=None):
    run_fire(main, argv, name="fastpnr compare")


if __name__ == "__main__":
    cli()
