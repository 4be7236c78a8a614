#!/usr/bin/env bash
# Iteration-level batching on real GPUs, one call (device machine, one GPU is enough):
#  1. a smoke run: OPT-1.3B at TP 1, bursts of multi-token requests, iteration batching, every
#     request served;
#  2. the Azure conversation trace on one Llama-3-8B at TP 1 (scenarios/azure-conv-iteration-h200x2.json
#     with overrides), request-level against iteration-level batching, replayed on the GPU (real
#     decoders, random weights) and simulated beside it (roofline, and the shipped profile
#     scenarios/profiles/h200x2.json).
# Usage: OUT=dir BIN=build-prebuilt/computron scripts/iteration-check.sh
# ITER_DURATION (default 90) and ITER_SCALE (default 0.35) set the trace's length and time scale,
# ITER_MODELS (default 1) how many Llama-3-8B models share the GPU (weight budget 40 GB: two fit,
# so three or more swap and drain each other's sessions); ITER_SKIP_SMOKE=1 skips step 1;
# ITER_BATCHINGS (default "request iteration") the modes compared; ITER_SET one more --set
# (e.g. ITER_SET='policy.max_drain_ms=10000'); ITER_TP (default 1) the models' tensor-parallel
# degree (2: each model over GPUs 0 and 1; the smoke run then uses TP 2 as well);
# ITER_WEIGHT_BUDGET (default 40) the weight budget per GPU in GB; ITER_SCENARIO another scenario
# of the same shape (one model entry; e.g. scenarios/mooncake-iteration-h200x2.json).
set -u
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-$PWD/iteration-out}
BIN=${BIN:-build-prebuilt/computron}
DUR=${ITER_DURATION:-90}
SCALE=${ITER_SCALE:-0.35}
MODELS=${ITER_MODELS:-1}
TP=${ITER_TP:-1}
WB=${ITER_WEIGHT_BUDGET:-40}
# At TP 1 the cluster is one H200 (h200x1), so the scripts run on a one-GPU machine: a cluster
# naming GPUs the machine lacks is refused by replay.
if [ "$TP" = 1 ]; then GPUSET='[0]'; PRESET=h200x1; else GPUSET='"all"'; PRESET=h200x2; fi
mkdir -p "$OUT"
LOG=$OUT/iteration-check.log
exec > >(tee -a "$LOG") 2>&1
step() { echo "=== $(date +%T) $*"; }
step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$BIN --version 2>/dev/null | head -1

if [ "${ITER_SKIP_SMOKE:-0}" != 1 ]; then
step "smoke: OPT-1.3B at TP $TP, iteration batching, real execution"
cat > /tmp/iter-smoke.json <<JSON
{"name": "iter-smoke", "seed": 3, "duration_s": 4, "cluster": {"preset": "$PRESET", "weight_budget_gb": 40},
 "models": [{"name": "m", "spec": "opt-1.3b", "count": 2, "tp": $TP, "gpus": $GPUSET, "max_batch": 8}],
 "workload": {"type": "gamma", "rates": [6, 3], "cv": 3, "prompt_tokens": 128, "output_tokens": 24},
 "policy": {"name": "lru-bytes", "max_loaded_models": 1, "batching": "iteration", "session_quantum_ms": 50, "max_drain_ms": 50},
 "outputs": {"dir": "$OUT/smoke"}}
JSON
timeout 120 $BIN replay /tmp/iter-smoke.json --device cuda --max-context 1024 --host-memory-gib 20 2>&1 | tail -8 || echo "FAILED smoke"
python3 - "$OUT/smoke" <<'PY' || echo "FAILED smoke check"
import csv, json, sys
d = sys.argv[1]
s = json.load(open(d + "/summary.json"))
rows = list(csv.DictReader(open(d + "/requests.csv")))
ids = [r["id"] for r in rows]
bad = [r for r in rows if r["ok"] != "1"]
print("SMOKE", json.dumps({"requests": len(rows), "unique": len(set(ids)), "failed": len(bad),
      "preempted": sum(1 for r in rows if r["preemptions"] not in ("", "0")), "served": s["overall"]["served"],
      "errors": sorted({r["error"] for r in bad})[:3]}))
PY
fi

SC=${ITER_SCENARIO:-scenarios/azure-conv-iteration-h200x2.json}
SETS=(--set "models[0].count=$MODELS" --set "models[0].tp=$TP" --set "models[0].gpus=$GPUSET" --set "duration_s=$DUR"
      --set "workload.time_scale=$SCALE" --set "cluster.preset=\"$PRESET\"" --set "cluster.weight_budget_gb=$WB")
[ -n "${ITER_SET:-}" ] && SETS+=(--set "$ITER_SET")
for b in ${ITER_BATCHINGS:-request iteration}; do
  step "$(basename "$SC" .json), $MODELS x llama-3-8b TP $TP, $b batching: replay"
  timeout 280 $BIN replay $SC --device cuda --max-context 8192 --host-memory-gib $((20 * MODELS + 10)) "${SETS[@]}" --set "policy.batching=\"$b\"" \
    --set "outputs.dir=\"$OUT/replay-$b\"" 2>&1 | tee "$OUT/replay-$b.log" | tail -6 || echo "FAILED replay $b"
  step "$(basename "$SC" .json), $b batching: simulator"
  $BIN sim $SC "${SETS[@]}" --set "policy.batching=\"$b\"" --set "outputs.dir=\"$OUT/sim-$b\"" 2>&1 | tail -3
  step "$(basename "$SC" .json), $b batching: simulator with the shipped profile"
  $BIN sim $SC "${SETS[@]}" --set "policy.batching=\"$b\"" --set "cluster.profile=\"$PWD/scenarios/profiles/h200x2.json\"" \
    --set "outputs.dir=\"$OUT/simprofile-$b\"" 2>&1 | tail -3
done
python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
for run in ["replay-request", "replay-iteration", "sim-request", "sim-iteration", "simprofile-request", "simprofile-iteration"]:
    p = os.path.join(out, run, "summary.json")
    if not os.path.exists(p):
        print("RESULT", run, "missing"); continue
    s = json.load(open(p)); o = s["overall"]
    print("RESULT", json.dumps({"run": run, "served": o["served"], "failed": o["failed"], "refused": o.get("refused"),
          "duration_s": s["duration_s"], "output_tokens_per_s": o["output_tokens_per_s"], "ttft_ms": o["ttft_ms"],
          "tpot_ms": o.get("tpot_ms"), "itl_ms": o.get("itl_ms"), "latency_ms": o["latency_ms"]}))
PY
step done
tar -C "$OUT" -czf "$OUT/iteration-results.tgz" --exclude='*.tgz' --exclude='timeline.json' . 2>/dev/null
