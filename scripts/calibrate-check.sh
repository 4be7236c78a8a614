#!/usr/bin/env bash
# A measured profile of this machine (computron calibrate), then replays for fidelity. One call
# on a 2 x H200 machine (device kind nvidia-h200-x2); carried binaries (the GPU machines lack
# Boost.Program_options): PREBUILT=dir holding computron built here with
# -DCOMPUTRON_STATIC_BOOST=ON (the runtime linked in).
#
#   1. machine: nvidia-smi name, driver, memory; cores and host memory
#   2. computron calibrate --models opt-13b --layouts 1x1,2x1 -> $OUT/profile-opt13b.json
#      (warm prefill and decode grids, batch tail, first batch after a load, and the loads:
#      direct alone and two at once, multi-path, from a resident copy, evictions)
#   3. CALIBRATE_ALL=1: opt-6.7b, llama-3-8b, llama-2-13b at 1x1,2x1 -> $OUT/profile-more.json
#      (--no-loads: the links come from step 2)
#   4. REPLAYS=1: each scenario of $REPLAY_SCENARIOS (space separated paths) under each policy set
#      of $REPLAY_POLICIES (default "computron best"): computron replay SCEN --set
#      cluster.preset=h200x2 --set models[0].tp=2 --set models[0].pp=1 --set policy.name=POL
#      $REPLAY_SETS -o $OUT/replay/NAME-POL -q; with REPLAY_AS_IS=1 each scenario as written
#      (scenarios/fidelity/*), no --set, into $OUT/replay/NAME
#
# Usage: PREBUILT=dir scripts/calibrate-check.sh [OUT_DIR]  (OUT_DIR: $OUT, else ./calibrate-out)
# Settings: CALIBRATE_OPT13B=0 skips step 2; CAL_LAYOUTS the layouts (default 1x1,2x1 on two GPUs); CALIBRATE_ARGS (extra calibrate options, e.g. "--repeats 3"), HOSTMEM_GIB (host
# memory the weight store may assume, default 200; the lent machines start with a small
# MemTotal), STEP_TIMEOUT_S (per step, default 570), WARMUP_COMPARE=1 (also a small calibrate of
# OPT-13B TP 2 with COMPUTRON_WARMUP=0: what the executors' warm-up saves on the first batch).
# Outputs in OUT_DIR: calibrate-check.log, the profiles, calibrate-*.log, replay.tar.gz. A failing
# step is reported and the script goes on; the summary at the end lists every step. Fold the new
# entries into a shipped profile afterwards with `computron profile merge BASE OUT_DIR/profile-*.json
# -o BASE` (docs/specs.md, "Gathering runs into one profile").
set -u
NAME=calibrate
# shellcheck source=scripts/device-common.sh
source "$(dirname "$0")/device-common.sh"
HOSTMEM=${HOSTMEM_GIB:-200}
STEP_TIMEOUT=${STEP_TIMEOUT_S:-570}
SUMMARY=()

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
# run NAME LOGFILE command...: times the command, logs its output, records ok/FAILED with seconds.
run() {
  local name=$1 logfile=$2; shift 2
  local t0 rc
  t0=$(date +%s.%N)
  timeout "$STEP_TIMEOUT" "$@" > >(tee "$logfile") 2>&1
  rc=$?
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if [ $rc -eq 0 ]; then
    SUMMARY+=("ok      ${secs} s  $name")
  else
    SUMMARY+=("FAILED  ${secs} s  $name (exit $rc$([ $rc -eq 124 ] && echo ", timed out after ${STEP_TIMEOUT} s"))")
  fi
  echo "--- $name: exit $rc, ${secs} s"
}

{
step machine
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv || echo "nvidia-smi failed"
echo "cores: $(nproc)"; free -g | head -2
"$BIN" --version || true
GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
echo "GPUs: $GPUS"
LAYOUTS=1x1
[ "$GPUS" -ge 2 ] && LAYOUTS=1x1,2x1
# CAL_LAYOUTS=2x1: the TP 2 entries only (the TP 1 ones can be measured on a one-GPU machine).
LAYOUTS=${CAL_LAYOUTS:-$LAYOUTS}

if [ "${CALIBRATE_OPT13B:-1}" = 1 ]; then
step "calibrate opt-13b ($LAYOUTS)"
# shellcheck disable=SC2086
run "calibrate opt-13b $LAYOUTS" "$OUTDIR/calibrate-opt13b.log" \
  "$BIN" calibrate --models opt-13b --layouts "$LAYOUTS" --host-memory-gib "$HOSTMEM" \
  --out "$OUTDIR/profile-opt13b.json" ${CALIBRATE_ARGS:-}
fi

if [ "${CALIBRATE_ALL:-0}" = 1 ]; then
  step "calibrate opt-6.7b, llama-3-8b, llama-2-13b ($LAYOUTS)"
  # shellcheck disable=SC2086
  run "calibrate opt-6.7b,llama-3-8b,llama-2-13b $LAYOUTS" "$OUTDIR/calibrate-more.log" \
    "$BIN" calibrate --models opt-6.7b,llama-3-8b,llama-2-13b --layouts "$LAYOUTS" --no-loads \
    --host-memory-gib "$HOSTMEM" --out "$OUTDIR/profile-more.json" ${CALIBRATE_ARGS:-}
fi

if [ "${WARMUP_COMPARE:-0}" = 1 ] && [ "$GPUS" -ge 2 ]; then
  step "first batch without the executors' warm-up (COMPUTRON_WARMUP=0)"
  for w in 0 1; do
    run "calibrate small grid, COMPUTRON_WARMUP=$w" "$OUTDIR/calibrate-warmup$w.log" \
      env COMPUTRON_WARMUP=$w "$BIN" calibrate --models opt-13b --layouts 2x1 --batches 1 --prompt-tokens 64 \
      --contexts 64 --repeats 3 --warmup 1 --no-loads --host-memory-gib "$HOSTMEM" \
      --out "$OUTDIR/profile-warmup$w.json"
    grep -E "first batch" "$OUTDIR/calibrate-warmup$w.log" | sed "s/^/  warmup=$w: /"
  done
fi

if [ "${REPLAYS:-0}" = 1 ]; then
  mkdir -p "$OUTDIR/replay"
  for scen in ${REPLAY_SCENARIOS:-}; do
    name=$(basename "$scen" .json)
    if [ "${REPLAY_AS_IS:-0}" = 1 ]; then
      # The scenario as written (scenarios/fidelity/*: cluster, layout and policy set in the file).
      step "replay $name"
      # shellcheck disable=SC2086
      run "replay $name" "$OUTDIR/replay/$name.log" \
        "$BIN" replay "$scen" --device cuda --host-memory-gib "$HOSTMEM" ${REPLAY_SETS:-} -o "$OUTDIR/replay/$name" -q
      continue
    fi
    for pol in ${REPLAY_POLICIES:-computron best}; do
      step "replay $name, policy $pol"
      # shellcheck disable=SC2086
      run "replay $name $pol" "$OUTDIR/replay/$name-$pol.log" \
        "$BIN" replay "$scen" --device cuda --host-memory-gib "$HOSTMEM" \
        --set cluster.preset=h200x2 --set 'models[0].tp=2' --set 'models[0].pp=1' --set "policy.name=$pol" \
        ${REPLAY_SETS:-} -o "$OUTDIR/replay/$name-$pol" -q
    done
  done
  [ -z "${REPLAY_SCENARIOS:-}" ] && echo "REPLAYS=1 but REPLAY_SCENARIOS is empty: no replays"
  tar -czf "$OUTDIR/replay.tar.gz" -C "$OUTDIR" replay && rm -rf "$OUTDIR/replay"
fi

step summary
for line in "${SUMMARY[@]}"; do echo "  $line"; done
for p in "$OUTDIR"/profile-*.json; do [ -f "$p" ] && echo "  profile: $p ($(wc -c < "$p") bytes)"; done
} 2>&1 | tee -a "$LOG"
