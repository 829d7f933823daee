"""fastpnr study: the paper's comparison grid (methods x strategies x seeds), one `fastpnr train` process per cell.

    fastpnr study --preset cifar100-5t --methods simclr,byol,barlow --regularizers finetune,cassle,pnr \\
                  --seeds 5,6,7 --out studies/c100 --gpus 0,1,2,3
    fastpnr study --preset smoke --methods simclr --regularizers finetune,pnr --seeds 5 --out studies/demo \\
                  --optim.epochs 1 --train.steps_per_epoch 2
    fastpnr study --status studies/c100

    --preset NAME[,NAME]        preset(s) of every cell (several: the cell names start with the preset)
    --methods A,B               SSL methods (default simclr)
    --regularizers A,B          continual strategies (default finetune,cassle,pnr)
    --seeds 5,6,7               train.seed of the cells (default 5)
    --scenario S[,S]            data.scenario per cell (default: the preset's)
    --backbones A,B             model.backbone per cell, e.g. resnet18,vit_tiny (default: the preset's); the report's
                                rows are then "method (backbone)"; a ViT's --model.patch_size is shared
    --out DIR                   the study folder: one run folder per cell, report.md/.json and PNGs
    --gpus 0,1,2,3              run one cell per GPU at a time (CUDA_VISIBLE_DEVICES); default: on CPU
    --nproc_per_cell N          each cell under torchrun on N of the GPUs (DDP); without --gpus, N gloo processes
    --jobs N                    on CPU: N cells at a time, each with cores/N threads (--train.threads)
    --retry-failed              rerun the failed cells once (resumed when they have a checkpoint)
    --protocol P                the report's protocol: linear, knn or online (default each run's own)
    --status DIR                what is done, running, failed; ETA (starts nothing); with Slurm the jobs' states
    --executor local|slurm      local (default): cells run here; slurm: each cell one Slurm job (fastpnr[slurm])
    --slurm.partition P         Slurm: --partition (default: the cluster's default partition)
    --slurm.time T              Slurm: --time of each job, MINUTES, H:MM:SS or D-HH:MM:SS (default 4:00:00)
    --slurm.gpus_per_cell N     Slurm: GPUs of a cell (torchrun over them; over --slurm.nodes nodes); default 0 (CPU)
    --slurm.cpus_per_cell N     Slurm: --cpus-per-task (default 1)
    --slurm.mem M               Slurm: --mem per node, e.g. 16G
    --slurm.account A           Slurm: --account
    --slurm.qos Q               Slurm: --qos
    --slurm.extra "..."         Slurm: further sbatch options, verbatim ("--constraint=a100 --exclusive")
    --slurm.nodes N             Slurm: nodes of a cell (default 1)
    --slurm.signal_delay_s S    Slurm: --signal=USR2@S, the warning before the time limit (default 120)
    --slurm.wait                Slurm: stay until every job has left the queue, then write the report
    --section.field VALUE       any `fastpnr train` option, given to every cell (--data-dir, --optim.epochs 1, ...)

Rerunning the same command skips finished cells, resumes interrupted ones from their checkpoints and adds the cells
of a changed grid; the train options must stay those the study started with. With --executor slurm it attaches to the
jobs in the queue (never submits a cell twice), submits what is missing and rewrites the report from what finished.
"""
from __future__ import annotations

import sys
from pathlib import Path

from fastpnr.cli import run_fire


def main(preset: str = "smoke", methods="simclr", regularizers="finetune,cassle,pnr", seeds=5, out: str | None = None,
         scenario=None, backbones=None, gpus=None, nproc_per_cell: int = 1, jobs: int = 1, retry_failed: bool = False,
         protocol: str | None = None, status: str | None = None, executor: str = "local", **overrides):
    """Run or continue a study; the options are listed above."""
    from fastpnr.study import runner as st
    from fastpnr.config import PROTOCOLS
    from fastpnr.errors import ConfigError, require

    if status is not None:
        study = st.load_study(Path(status))
        if study.get("executor") == "slurm":
            from fastpnr.study import slurm

            print(slurm.status_report(Path(status)))
        else:
            print(st.status_report(Path(status)))
        return
    require(executor in ("local", "slurm"), "executor", executor, ("local", "slurm"))
    slurm_opts = None
    if executor == "slurm":
        from fastpnr.study import slurm

        require(gpus is None and jobs == 1, "gpus" if gpus is not None else "jobs", gpus if gpus is not None else jobs,
                "unset with --executor slurm (--slurm.gpus_per_cell, one job per cell)")
        slurm_opts, overrides = slurm.slurm_options(overrides)
    else:
        bad = [k for k in overrides if k.startswith("slurm.")]
        require(not bad, "option", f"--{bad[0]}" if bad else None, "--slurm.* options with --executor slurm")
    if out is None:
        raise ConfigError("out=None is invalid; allowed: a study folder (--out DIR)")
    require(protocol is None or protocol in PROTOCOLS, "protocol", protocol, PROTOCOLS)
    opts = st.StudyOptions(
        out=Path(out).resolve(), presets=tuple(st.as_list(preset, "preset")),
        scenarios=tuple(st.as_list(scenario, "scenario")) if scenario is not None else None,
        methods=tuple(st.as_list(methods, "methods")), regularizers=tuple(st.as_list(regularizers, "regularizers")),
        seeds=tuple(st.as_list(seeds, "seeds", int)), shared=st.normalize_shared(overrides),
        slots=tuple(st.make_slots(gpus, nproc_per_cell, jobs)), nproc_per_cell=nproc_per_cell,
        retry_failed=retry_failed, protocol=protocol,
        backbones=tuple(st.as_list(backbones, "backbones")) if backbones is not None else None)
    try:
        states = st.run_study(opts) if slurm_opts is None else slurm.run_slurm_study(opts, slurm_opts)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the cells were stopped and keep their checkpoints
        print(f"study stopped; the same command resumes it (fastpnr study --status {out})", file=sys.stderr)
        sys.exit(130)
    failed = [name for name, s in states.items() if s.status == "failed"]
    if failed:
        print(f"failed cells: {', '.join(failed)} (their train.log; --retry-failed reruns them)")
    if slurm_opts is not None and not slurm_opts.wait:
        print(f"the jobs run on; fastpnr study --status {out} shows them, the same command attaches to them")


def cli(argv=None):
    run_fire(main, argv, name="fastpnr study")


if __name__ == "__main__":
    cli()
