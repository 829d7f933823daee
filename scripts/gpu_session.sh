#!/usr/bin/env bash
# The GPU checks of issues 4 (kernel), 5 (loaders) and 6 (fast step), ready for a session that is lent a GPU machine.
#
# Here, in the project's root (needs ../shared):
#   bash scripts/gpu_session.sh prepare            # .carry/ (git-ignored): the cp312 wheels + CIFAR-10, ~28 MiB
#   bash scripts/gpu_session.sh prepare imagenette  # .carry/ with Imagenette-112 instead of CIFAR-10 (~62 MiB)
# On the GPU machine, through the device tool with carry [".carry"] (each call must stay under its 10 minutes):
#   bash scripts/gpu_session.sh run env tests kernels   # call 1: versions, CUDA tests, bench_kernels (3 settings)
#   bash scripts/gpu_session.sh run bench loaders profile   # call 2: end-to-end bench, loaders, profiler trace
# Every step writes $OUT/<step>.log (rc= on its last line) and prints its tail; a failing step does not stop the next.
# Copy the figures you see into BENCHMARKS.md (device, command, batch, img/s, ratio) — only those.
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
  local what=${1:-cifar10} shared=../shared
  [ -d "$shared/wheels/cp312" ] || { echo "error: $shared/wheels/cp312 not found (run from a checkout beside shared/)"; exit 2; }
  rm -rf .carry && mkdir -p .carry/wheels .carry/data
  cp "$shared"/wheels/cp312/*.whl .carry/wheels/
  case "$what" in
    cifar10) mkdir -p .carry/data/cifar10 && cp "$shared"/data/cifar10/*.tar.xz .carry/data/cifar10/ ;;
    imagenette) mkdir -p .carry/data/imagenette112 && cp "$shared"/data/imagenette112/*.tar.xz .carry/data/imagenette112/ ;;
    *) echo "error: prepare $what is invalid; allowed: cifar10, imagenette"; exit 2 ;;
  esac
  du -sh .carry
}

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc seconds=$((SECONDS - t0))" >> "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
}

run() {
  OUT=${OUT:-/tmp/fastpnr-gpu-out}
  mkdir -p "$OUT"
  if [ -d .carry/wheels ] && [ ! -f /tmp/site/.fastpnr-wheels ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .carry/wheels/*.whl > "$OUT/install.log" 2>&1 && touch /tmp/site/.fastpnr-wheels
  fi
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  export FASTPNR_DATA="$PWD/.carry/data" FASTPNR_CACHE=/tmp/fastpnr-cache
  local steps=("$@")
  [ ${#steps[@]} -gt 0 ] || steps=(env tests kernels)
  for s in "${steps[@]}"; do
    case "$s" in
      env) step env 120 bash -c 'nvidia-smi; python3 -c "import torch, triton, numpy; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"numpy\", numpy.__version__, torch.cuda.get_device_name())"; python3 -m kernels.aot --arch 90' ;;
      tests) step tests 240 python3 -m pytest -q -x tests/kernels tests/trainer/test_graph_step.py \
               tests/trainer/test_frozen_stream.py tests/loaders/test_prefetch.py tests/loaders/test_gpu_aug.py ;;
      kernels)
        step kernels-fp32 150 python3 scripts/bench_kernels.py --device cuda --iters 30
        step kernels-tf32 150 python3 scripts/bench_kernels.py --device cuda --iters 30 --matmul_precision high
        step kernels-bf16 150 python3 scripts/bench_kernels.py --device cuda --iters 30 --dtype bfloat16 ;;
      bench) step bench 300 python3 -m fastpnr bench --device cuda --steps 50 --warmup 10 ;;
      loaders) step loaders 240 python3 -m fastpnr bench_loaders --device cuda --datasets cifar10 \
                 --kinds torchvision,gpu,ffcv,dali --batches 30 ;;
      loaders-imagenette) step loaders-imagenette 300 python3 -m fastpnr bench_loaders --device cuda \
                 --datasets imagenette112 --kinds torchvision,gpu,ffcv,dali --batches 20 ;;
      profile) step profile 180 python3 -m fastpnr profile --device cuda --out_dir "$OUT/profile" ;;
      *) echo "error: step $s is invalid; allowed: env, tests, kernels, bench, loaders, loaders-imagenette, profile"
         exit 2 ;;
    esac
  done
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash scripts/gpu_session.sh prepare [cifar10|imagenette] | run [env tests kernels bench loaders loaders-imagenette profile]"
     exit 2 ;;
esac
