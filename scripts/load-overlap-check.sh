#!/usr/bin/env bash
# Loads while the GPU computes, one call (device machine, one GPU is enough):
#  1. `computron_model_check overlap`: the copy engine's host-to-device rate while GPU 0 idles,
#     runs products, device copies, prefill or decode (three kinds of pinned host memory);
#  2. three Llama-3-8B models sharing one H200 on the Mooncake trace (two fit, so loads overlap
#     the other model's sessions), iteration-level batching, with COMPUTRON_LOAD_TRACE=1: per
#     window of every load, when it was issued, when its continuation's callback ran and how
#     long issuing took; per captured decode graph, its capture time. Each variant in
#     LOAD_VARIANTS is "name:ENV=VALUE,ENV=VALUE" (empty env: the defaults).
# Usage: OUT=dir PREBUILT=build-prebuilt scripts/load-overlap-check.sh
# Results: $OUT/overlap.log and $OUT/<variant>.tgz (logs, summary, timeline, requests); at most
# eight files come back from a device call, so each variant is one archive.
set -u
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-$PWD/load-overlap-out}
PREBUILT=${PREBUILT:-build-prebuilt}
VARIANTS=${LOAD_VARIANTS:-"default:"}
RUN_S=${LOAD_RUN_TIMEOUT_S:-170}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee "$OUT/machine.txt"
if [ "${LOAD_SKIP_PROBE:-0}" != 1 ]; then
  timeout 300 "$PREBUILT/computron_model_check" overlap --preset llama-3-8b --gib 8 --repeats 3 2>&1 | tee "$OUT/overlap.log"
fi
for v in $VARIANTS; do
  name=${v%%:*}
  envs=${v#*:}
  dir=$OUT/$name
  mkdir -p "$dir"
  echo "=== $(date +%T) variant $name (${envs:-defaults})"
  (
    IFS=','
    for kv in $envs; do [ -n "$kv" ] && export "$kv"; done
    unset IFS
    COMPUTRON_LOAD_TRACE=1 OUT=$dir BIN=$PREBUILT/computron ITER_SCENARIO=scenarios/mooncake-iteration-h200x2.json \
      ITER_SKIP_SMOKE=1 ITER_MODELS=3 ITER_DURATION=60 ITER_SCALE=0.15 ITER_WEIGHT_BUDGET=40 \
      ITER_SET='models[0].max_batch=64' ITER_BATCHINGS="${LOAD_BATCHINGS:-iteration}" \
      timeout "$RUN_S" scripts/iteration-check.sh > /dev/null 2>&1
  )
  grep -h '^RESULT {"run": "replay' "$dir/iteration-check.log" | cut -c1-240
  for b in ${LOAD_BATCHINGS:-iteration}; do
    [ -f "$dir/replay-$b.log" ] && python3 scripts/load_trace_report.py "$dir/replay-$b.log" "$dir/replay-$b/timeline.json" \
      | tee "$dir/load-trace-report-$b.txt" | tail -4
  done
  rm -rf "$dir"/sim-* "$dir"/simprofile-* "$dir"/*.tgz
  tar -C "$OUT" -czf "$OUT/$name.tgz" "$name" && rm -rf "$dir"
done
echo "=== $(date +%T) done"
