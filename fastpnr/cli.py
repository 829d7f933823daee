"""The ``fastpnr`` console script: ``fastpnr <command> ...`` dispatches to the fire scripts in ``scripts/``."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": "continual SSL training (all tasks) with evaluation after each task",
    "linear": "offline linear evaluation of a checkpoint",
    "knn": "kNN evaluation of a checkpoint",
    "compare": "runs side by side: final accuracy, A_T, forgetting, forward transfer, img/s (table, plot)",
    "study": "the comparison grid (methods x strategies x seeds), one train process per cell; report, --status",
    "to_beton": "write an FFCV .beton file from a dataset",
    "cache": "list the decode cache (entries, sizes, last use) and evict: --clear, --clear_older_than, --max_size",
    "bench": "side-by-side step benchmark (anchors' pipeline vs fastpnr)",
    "bench_cpu": "CPU step table: precision x threads x OpenMP wait policy, idle and beside CPU burners; --end_to_end",
    "bench_scaling": "training img/s on 1, 2, ... processes under torchrun (same global batch), the scaling check",
    "bench_loaders": "loader throughput benchmark",
    "bench_kernels": "fused InfoNCE kernel benchmark",
    "bench_vit": "ViT MoCo v3 + PNR step benchmark, one img/s row per attention kernel (flash, efficient, math)",
    "profile": "torch.profiler trace of training steps",
    "export": "write a trained model's backbone (task{t}.pt) as a torchvision-layout ResNet (a ViT: timm-layout) state_dict",
}


def run_fire(main, argv=None, name: str = "fastpnr"):
    """Run a fire CLI; bad input (any FastPNRError) is one line on stderr and exit code 2, not a traceback.

    ``-h``/``--help`` prints the help generated from ``main`` (``fastpnr.helptext``) on stdout: fire's own help
    starts with an "INFO:" line, goes to stderr and opens a pager."""
    import fire

    from .errors import FastPNRError
    from .helptext import command_help, wants_help

    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(command_help(main, name))
        return
    try:
        fire.Fire(main, command=argv, name=name)
    except FastPNRError as e:
        report_error(e)
        sys.exit(2)  # a plain exit: no Python traceback; under torchrun its summary reports exit code 2


def report_error(e: Exception) -> None:
    """``error: <e>`` on stderr; under torchrun once per launch (rank 0; ``distributed.report_error``)."""
    import os

    if "RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") != "1":
        from .system.distributed import report_error as report_once  # imports torch: only under a launcher

        report_once(e)
    else:
        print(f"error: {e}", file=sys.stderr)


def _module(command: str):
    # A source checkout (its setup.py beside the fastpnr package; e.g. PYTHONPATH=<checkout>): that checkout's
    # scripts/, never the ones an editable install of another checkout maps to fastpnr.scripts.
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if (root / "setup.py").is_file() and (root / "scripts" / f"{command}.py").is_file():
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        return importlib.import_module(f"scripts.{command}")
    try:
        return importlib.import_module(f"fastpnr.scripts.{command}")
    except ModuleNotFoundError:
        # Running from a source checkout without installation.
        return importlib.import_module(f"scripts.{command}")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage: fastpnr <command> [options]   (fastpnr <command> --help for its options)\n\ncommands:")
        for name, what in COMMANDS.items():
            print(f"  {name:<14} {what}")
        return
    command = argv[0].replace("-", "_")
    if command not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    from .system.cpu_threads import prepare_environment

    prepare_environment()  # OpenMP's wait policy and the auto thread count, before the command imports torch
    try:
        module = _module(command)
    except ModuleNotFoundError as e:
        print(f"error: command {command!r} is not available in this installation ({e})", file=sys.stderr)
        sys.exit(2)
    if hasattr(module, "cli"):
        module.cli(argv[1:])
    else:
        run_fire(module.main, argv[1:], name=f"fastpnr {command}")


if __name__ == "__main__":
    main()
