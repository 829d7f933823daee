"""fastpnr train: continual self-supervised training, all tasks, evaluation after each.

    fastpnr train --preset smoke --data-dir ../shared/data --out runs/smoke
    fastpnr train --preset cifar100-5t --method byol --regularizer pnr --optim.lr 1.0 --out runs/byol
    fastpnr train --config runs/smoke/config.json --out runs/again [--optim.lr 0.2]   # a run's config, again
    fastpnr train --resume runs/smoke [--train.progress false]
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fastpnr.cli import run_fire
from fastpnr.errors import FastPNRError
from fastpnr.system.preempt import EXIT_INTERRUPTED


def main(preset: str | None = None, out: str | None = None, resume: str | None = None, overwrite: bool = False,
         allow_config_change: bool = False, config: str | None = None, **overrides):
    """Continual SSL training; `fastpnr train --help` prints the options generated from the registries."""
    try:
        return _train(preset, out, resume, overwrite, allow_config_change, overrides, config)
    except KeyboardInterrupt:  # Ctrl-C before the run's first checkpoint (after it, preempt stops the run)
        folder = resume or out
        resumable = folder is not None and (Path(folder) / "checkpoint.pt").is_file()
        print("stopped by Ctrl-C" + (f"; resume with --resume {folder}" if resumable else
                                     " before the run's first checkpoint (nothing to resume)"), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if "fastpnr.system.distributed" in sys.modules:  # torch was loaded: end the process group, if one was made
            sys.modules["fastpnr.system.distributed"].shutdown()


def _train(preset, out, resume, overwrite, allow_config_change, overrides, config=None):
    """The checks that need no torch come first (the command line, the folder, the preset, the config file, the
    option values), so that a typo is one line in a second, not after `import torch` (half a minute on a busy
    machine); the checks across sections, the device and the data follow once torch is loaded."""
    from fastpnr.config import build_config, normalize_overrides
    from fastpnr.run.folder import check_writable_folder, resume_folder

    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun
        resume, out, preset, overrides, config = _launched(resume, out, preset, overrides, config)
    if resume:
        for flag, given in (("--preset", preset), ("--out", out), ("--overwrite", overwrite), ("--config", config)):
            if given:
                raise FastPNRError(f"{flag} cannot be combined with --resume (the run keeps its folder and "
                                   "configuration); allowed with --resume: --section.field VALUE overrides, "
                                   "--allow-config-change")
        check_writable_folder(resume_folder(resume), "--resume")  # before anything is read: one line
        normalize_overrides(overrides)  # unknown option names (their values are checked against the checkpoint's)
        from fastpnr.train.continual import resume_run

        return _done(resume_run(resume, overrides, allow_config_change=allow_config_change), resume_folder(resume))
    if allow_config_change:
        raise FastPNRError("--allow-config-change is only for --resume RUN_DIR; allowed for a new run: --out, --overwrite")
    if out:
        check_writable_folder(out)  # before anything is read: a folder that cannot be written fails in one line
    if config is None:
        preset = preset or "smoke"
    # --config FILE: the file over the preset (none given: over the dataclass defaults), the options over both
    build_config(preset, overrides, config_file=config, combinations=False)  # without torch: a typo in a second
    cfg = build_config(preset, overrides, config_file=config)  # + the checks across sections (the classes: torch)
    from fastpnr.train.continual import ContinualRun

    name = preset or Path(config).stem
    out = out or cfg.out or f"runs/{name}-{cfg.method.name}-{cfg.regularizer.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    metrics = ContinualRun(cfg, out, overwrite=overwrite).fit()
    return _done(metrics, out)


def _launched(resume, out, preset, overrides, config):
    """Under torchrun: every rank names the run folder; a worker torchrun restarted (--max-restarts) continues from
    the checkpoint this launch wrote, with its configuration."""
    from fastpnr.system import distributed
    from fastpnr.train.continual import CHECKPOINT

    if distributed.torchrun_env()[1] > 1 and not (out or resume):
        raise FastPNRError("--out RUN_DIR is required under torchrun (every rank must name the same run folder)")
    if not resume and out and distributed.is_elastic_restart() and _written_by_this_launch(Path(out) / CHECKPOINT):
        return out, None, None, {}, None
    return resume, out, preset, overrides, config


def _written_by_this_launch(checkpoint: Path) -> bool:
    """Whether this torchrun invocation wrote ``checkpoint`` (so a restarted worker continues its own run, never one
    that was in --out before: a first attempt refused on such a folder stays refused)."""
    from fastpnr.system import distributed
    from fastpnr.system.checkpoint import load_checkpoint

    if not checkpoint.is_file():
        return False
    ckpt = load_checkpoint(checkpoint, mmap=True)  # a truncated file: one line naming it
    return ckpt.get("launch_id") is not None and ckpt.get("launch_id") == distributed.launch_id()


def _done(metrics, out):
    from fastpnr.system import distributed

    if (distributed.torchrun_env() or (0,))[0] == 0:  # torchrun: rank 0 speaks
        print(f"run folder: {Path(out).resolve()} (metrics.json, accuracy_matrix.csv/png, tb/)")


def help_text(topic: str | None = None) -> str:
    """The summary and every configuration field; ``topic`` (a section, method or regularizer): its fields only."""
    from fastpnr.helptext import config_reference

    if topic is not None:
        return config_reference(topic)
    return summary_text() + "\n" + config_reference()


def summary_text() -> str:
    from fastpnr.config import ALIASES, PRESETS, SCENARIOS
    from fastpnr.data import DATASETS
    from fastpnr.methods import METHODS
    from fastpnr.regularizers import REGULARIZERS
    from fastpnr.run.folder import RESUME_SAFE

    try:
        from loaders import LOADERS
        loaders = ", ".join(sorted(LOADERS))
    except Exception:  # pragma: no cover
        loaders = "gpu"
    presets = "\n".join(f"      {k:<20} {v.get('description', '')}" for k, v in PRESETS.items())
    return f"""Continual self-supervised training (all tasks), with evaluation after every task.

    fastpnr train --preset NAME [--data-dir DIR] [--out RUN_DIR [--overwrite]] [--section.field VALUE ...]
    fastpnr train --config FILE [--preset NAME] [--out RUN_DIR] [--section.field VALUE ...]
    fastpnr train --resume RUN_DIR [--train.progress false] [--allow-config-change]

    methods:      {', '.join(sorted(METHODS))}        (--method NAME)
    regularizers: {', '.join(sorted(REGULARIZERS))}        (--regularizer NAME)
    datasets:     {', '.join(sorted(DATASETS))}        (--dataset NAME)
    scenarios:    {', '.join(SCENARIOS)}        (--scenario NAME)
    loaders:      {loaders}        (--loader NAME)
    presets:
{presets}

    Every configuration field can be overridden as --section.field VALUE with section one of
    data, model, method, regularizer, optim, train, eval, dist (e.g. --optim.lr 0.3 --train.precision fp32).
    Under torchrun (one process per GPU, or gloo on CPU) --optim.batch_size is the global batch; see README.
    Short names: {', '.join(f'--{k}' for k in ALIASES)}.
    Data: --data-dir, else $FASTPNR_DATA, else ../shared/data beside the checkout.
    --out RUN_DIR: the run folder (default runs/<preset>-<method>-<regularizer>-<time>); one run per folder: a
    folder holding a run stops unless --overwrite (deletes that run's files, nothing else). --resume takes the
    folder or its checkpoint.pt; only {', '.join(RESUME_SAFE)} may change, anything else needs
    --allow-config-change (recorded in metrics.json).
    --config FILE: a JSON or YAML file shaped like a run's config.json (sections data, model, method, regularizer,
    optim, train, eval, dist; any subset of fields); a run's own config.json trains that configuration again. It is
    laid over --preset when one is given (else over the defaults below, not over smoke), and the --section.field
    options over both; its keys and values are checked as the options are. YAML needs PyYAML (pip install pyyaml).
    Not with --resume (a resumed run keeps its checkpoint's configuration).
    fastpnr train --help TOPIC: the fields of one section (data, model, method, regularizer, optim, train, eval),
    one method (e.g. byol) or one regularizer (e.g. pnr).

Configuration fields: their defaults before the preset (a preset and its per-method block change some; the run
prints its resolved configuration), the values allowed, and what they mean.
"""


def cli(argv=None):
    """Entry point with one-line errors for bad input (no traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    flag = next((i for i, a in enumerate(args) if a in ("-h", "--help")), None)
    if flag is not None:
        topic = args[flag + 1] if flag + 1 < len(args) and not args[flag + 1].startswith("-") else None
        try:
            print(help_text(topic))
        except FastPNRError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        return
    run_fire(main, args, name="fastpnr train")


if __name__ == "__main__":
    cli()
