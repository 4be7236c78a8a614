#!/usr/bin/env bash
# Issue 13's fidelity work on a machine with one GPU (device kind nvidia-h200), one call:
#
#   1. machine
#   2. CAL=1 (default): computron calibrate of $CAL_MODELS (default llama-3-8b,opt-13b) at TP 1,
#      --no-loads (the links of a one-GPU machine lack the two-GPU routes), with $CAL_ARGS (the grid:
#      default batches 1..64, prompts and contexts 16..2048; repeats 3 after 1) -> $OUTDIR/profile-tp1.json.
#      A model whose grids need more than one GPU's memory gets CAL_ARGS_<preset> instead
#      (dots and dashes as underscores, e.g. CAL_ARGS_opt_13b).
#   3. REPLAYS (space separated fidelity case names, default four of scenarios/fidelity/): each case
#      replayed at TP 1 on one H200 (--set cluster.preset="h200x1", and tp=1, gpus=[0] for every
#      model of a case), real execution -> $OUTDIR/replay/<case>/, packed into $OUTDIR/replay.tar.gz.
#      An entry that is a file (e.g. scenarios/fidelity-1gpu/*.json) is replayed as it is.
#
# Usage: PREBUILT=dir scripts/fidelity-1gpu-check.sh [OUT_DIR]
# The simulator side runs on any machine afterwards:
#   scripts/fidelity_report.py OUT_DIR/replay --computron build/computron --profile OUT_DIR/profile-tp1.json \
#     --set 'cluster.preset="h200x1"' --model-set tp=1 --model-set 'gpus=[0]'

set -u
NAME=fidelity-1gpu
# shellcheck source=scripts/device-common.sh
source "$(dirname "$0")/device-common.sh"
HOSTMEM=${HOSTMEM_GIB:-100}
STEP_TIMEOUT=${STEP_TIMEOUT_S:-400}
exec > >(tee -a "$LOG") 2>&1
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$BIN" --version | head -1

if [ "${CAL:-1}" = 1 ]; then
  MODELS=${CAL_MODELS:-llama-3-8b,opt-13b}
  DEFAULT_ARGS="--batches 1,2,4,8,16,32,64 --prompt-tokens 16,64,256,1024,2048 --contexts 16,64,256,1024,2032 --repeats 3 --warmup 1"
  parts=()
  for m in ${MODELS//,/ }; do
    var=CAL_ARGS_${m//[.-]/_}
    args=${!var:-${CAL_ARGS:-$DEFAULT_ARGS}}
    step "calibrate $m at TP 1: $args"
    # shellcheck disable=SC2086
    timeout "$STEP_TIMEOUT" "$BIN" calibrate --models "$m" --layouts 1x1 --no-loads $args \
      --host-memory-gib "$HOSTMEM" -o "$OUTDIR/profile-$m.json" > "$OUTDIR/calibrate-$m.log" 2>&1 || echo "FAILED calibrate $m"
    tail -40 "$OUTDIR/calibrate-$m.log"
    [ -f "$OUTDIR/profile-$m.json" ] && parts+=("$OUTDIR/profile-$m.json")
  done
  # One profile of every model measured (computron profile merge: entries added in turn, each run
  # recorded in provenance.runs).
  if [ ${#parts[@]} -gt 0 ]; then
    cp "${parts[0]}" "$OUTDIR/profile-tp1.json"
    [ ${#parts[@]} -gt 1 ] && { "$BIN" profile merge "$OUTDIR/profile-tp1.json" "${parts[@]:1}" -o "$OUTDIR/profile-tp1.json" > /dev/null \
      || echo "FAILED merge"; }
  fi
fi

CASES=${REPLAYS-fidelity-3m-cv4-1tok-best fidelity-3m-cv4-1tok-computron fidelity-6m-cv4-1tok-best fidelity-6m-cv1-32tok-best}
for c in $CASES; do
  sets=()
  if [ -f "$c" ]; then
    # A scenario file made for one GPU (scenarios/fidelity-1gpu/): replayed as it is.
    sc=$c
    c=$(basename "$c" .json)
  else
    sc=scenarios/fidelity/$c.json
    n=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['models']))" "$sc")
    sets=(--set 'cluster.preset="h200x1"')
    for ((i = 0; i < n; i++)); do sets+=(--set "models[$i].tp=1" --set "models[$i].gpus=[0]"); done
  fi
  step "replay $c at TP 1 on GPU 0"
  timeout "$STEP_TIMEOUT" "$BIN" replay "$sc" --device cuda --host-memory-gib "$HOSTMEM" "${sets[@]}" \
    -o "$OUTDIR/replay/$c" -q 2>&1 | tail -5 || echo "FAILED replay $c"
done
tar -C "$OUTDIR" -czf "$OUTDIR/replay.tar.gz" replay 2>/dev/null && rm -rf "$OUTDIR/replay"
step done
