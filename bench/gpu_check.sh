#!/usr/bin/env bash
# The GPU check, for a GPU machine as it is: its own python3 with torch and torchvision, no Ray,
# no Optuna, no network. At most 6 minutes of command time (each step's timeout below and the
# final verify's add up to 350 s), so a 15-minute lease keeps room for the machine's start and a rerun.
#   1. info: torch, CUDA, the GPU, its compute capability and memory, what --amp auto picks;
#   2. the GPU tests (pytest -m gpu tests/test_gpu.py: numerics, no host sync per batch, the
#      memory cap, the memory estimate against the real peak, the feature cache on CUDA);
#   3. train and eval images/s of resnet18, resnext50_32x4d and resnet101 at 224 px, per numerics
#      (bf16, fp32, fp16), batch 16 and 64, repeat 1,3,1,1 and 1,3,3,1: three timed passes after
#      a warm-up, through the trial's own train_epoch/evaluate, with the peak memory beside its
#      estimate (tlstudy.training.memory);
#   4. the trials' data: Kermany's split sizes as phantoms, and a stand-in resnet18 weights file
#      at $TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth, as the tests place one;
#   5. one 2-epoch full-profile trial through the project's own command (python -m tlstudy trial),
#      nvidia-smi sampling; 6. four such trials side by side: what packing gains.
# Without CUDA (or with GPU_CHECK_CPU=1) the same steps run at tiny sizes: the check of this
# script before GPU time is spent on it (tests/test_gpu_check.py runs it so).
#
#   bash bench/gpu_check.sh          # writes $OUT/gpu_check.json, gpu_check.log, gpu_tests.xml
#   PYTHON=/tmp/gpuenv/bin/python bash bench/gpu_check.sh    # another interpreter (default python3)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu_check.out}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tlstudy-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export TLSTUDY_CACHE_DIR="$WORK/cache" TORCH_HOME="$WORK/torch" PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/gpu_check.log"
: >"$LOG"
: >"$WORK/steps"
T0=$(date +%s%N)

step() {  # step NAME SECONDS COMMAND...: the command under its timeout, its output to the log
    local name=$1 limit=$2 t0 rc
    shift 2
    t0=$(date +%s%N)
    echo "== $name (at most $limit s)" | tee -a "$LOG"
    timeout -k 1 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    echo "$name $rc $limit $(( ($(date +%s%N) - t0) / 1000000 ))" >>"$WORK/steps"
    echo "   exit $rc after $(( ($(date +%s%N) - t0) / 1000000000 )) s"
}

step info 15 "$PY" bench/gpu_check.py info "$WORK"
grep -m1 '^mode=' "$LOG"
MODE=$(cat "$WORK/mode" 2>/dev/null || echo cpu)
SIZE=(); [ "$MODE" = cpu ] && SIZE=(--image-size 16 --batch-size 8 --min-val 0)
# A quarter of the cores per process from here on, as four trials side by side would share them
# (a study's one-CPU trial has one thread): on a busy 2-core machine, two threads per process
# spin against each other and made a 16 px CPU epoch ten times slower.
THREADS=$(( $(nproc) / 4 )); [ "$THREADS" -ge 1 ] || THREADS=1
export OMP_NUM_THREADS=$THREADS

step gpu_tests 70 "$PY" -m pytest -o addopts= -p no:cacheprovider -m gpu -q -rA tests/test_gpu.py \
    --junitxml="$WORK/gpu_tests.xml"
step throughput 100 "$PY" bench/gpu_check.py throughput "$WORK"
step data 30 "$PY" bench/gpu_check.py data "$WORK"

# taskE's protocol trial with its input tiled three times in height (6 of its 9 cells train so).
TRIAL=("$PY" -X importtime -m tlstudy trial --profile full --data "$WORK/data.npz" --epochs 2 --arch resnet18
       --weights IMAGENET1K_V1 --batch-size 16 --train-repeat 1,3,3,1 --eval-repeat 1,3,1,1 "${SIZE[@]}")
step trial 50 "$PY" bench/gpu_check.py trials "$WORK" 1 45 "${TRIAL[@]}"
step four_trials 70 "$PY" bench/gpu_check.py trials "$WORK" 4 65 "${TRIAL[@]}"
for f in "$WORK"/trial*_*.out "$WORK"/trial*_*.err; do  # the trials' own output, without -X importtime's
    [ -e "$f" ] && { echo "-- $(basename "$f")"; grep -v '^import time:' "$f"; } >>"$LOG"
done

TOTAL=$(( ($(date +%s%N) - T0) / 1000000 ))
step summary 10 "$PY" bench/gpu_check_report.py summary "$WORK" "$OUT/gpu_check.json" "$(( TOTAL / 1000 ))"
[ -e "$WORK/gpu_tests.xml" ] && cp "$WORK/gpu_tests.xml" "$OUT/"
cat "$WORK/digest.txt" 2>/dev/null
echo "figures: $OUT/gpu_check.json  log: $LOG"
# The exit status: 0 only when every step ended well, the GPU tests passed (or were skipped without
# CUDA), nothing imported the study layer's packages and the trials left their epoch times.
timeout -k 1 5 "$PY" bench/gpu_check_report.py verify "$OUT/gpu_check.json"
