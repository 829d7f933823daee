#!/usr/bin/env bash
# The GPU session in ONE device call that ends within 9 minutes (scripts/gpu_session.py has the plan and the details).
#
# Here, in the root of the checkout that the session's device calls send (needs the shared folder beside it):
#   bash scripts/gpu_session.sh prepare            # .carry/ (git-ignored): the cp312 wheels the call needs + CIFAR-10
#   bash scripts/gpu_session.sh prepare --dali     # + 4,096 Imagenette-112 images, for the DALI step (see below)
#   bash scripts/gpu_session.sh --dry-run          # the plan: steps in order, commands, time boxes (sum <= 540 s)
#   bash scripts/gpu_session.sh run --cpu          # every step's CPU quick variant: the plumbing, tested here
# Then one device call, as prepare prints it: command 'bash scripts/gpu_session.sh run', carry [".carry"],
# timeout_s 580. It writes env.log, tests.log, bench.log (with the ViT-Small step of `fastpnr bench_vit`), kernels.log,
# train.log, dali.log and summary.json (every
# step's status, seconds and log tail, rewritten after each step) to $OUT, and prints a summary table last.
# DALI: its wheel set (256 MiB) does not fit in one call's 64 MiB, so the dali step is skipped unless that set was
# staged in /root/dali/w on the same warm machine by earlier calls (shared/DEPS.md) and prepare --dali was used.
# Copy the figures you see into BENCHMARKS.md (device, command, batch, img/s, ratio) — only those.
set -uo pipefail
cd "$(dirname "$0")/.."
# The interpreter: $GPU_SESSION_PYTHON, else the active venv's, else python3 on the PATH.
PY=python3
[ -n "${VIRTUAL_ENV:-}" ] && PY="$VIRTUAL_ENV/bin/python"
[ -n "${GPU_SESSION_PYTHON:-}" ] && PY="$GPU_SESSION_PYTHON"
case "${1:-}" in
  prepare|run|env) exec "$PY" -m scripts.gpu_session "$@" ;;
  --dry-run) shift; exec "$PY" -m scripts.gpu_session run --dry-run "$@" ;;
  *) echo "usage: bash scripts/gpu_session.sh prepare [--dali] [--dry-run] | run [--dry-run] [--cpu] [--only STEPS]" \
          "| --dry-run"
     exit 2 ;;
esac
