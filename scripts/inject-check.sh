#!/usr/bin/env bash
# Injected faults on a GPU (computron replay --inject on --device cuda): one call on one H200
# (device kind nvidia-h200), under 3 minutes. Carried binaries (the GPU machines lack
# Boost.Program_options): PREBUILT=dir holding computron built here with
# -DCOMPUTRON_STATIC_BOOST=ON (the runtime linked in).
#
# The scenario: three OPT-125M models on GPU 0, one resident at a time (every request alternates
# models, so every request loads one), nine requests of 8 prompt and 2 output tokens, every load
# checksummed on the device. Each case replays it with one fault and checks with python3 that
# every request that arrived ended exactly once (summary.json: arrivals = requests = served +
# failed; requests.csv: one row per id) and that the fault did what it says:
#
#   fail-load      --inject fail-load=m-1@1      one request fails naming "injected fault (fail-load=m-1@1)"
#   corrupt-load   --inject corrupt-load=m-2     the three requests of m-2 fail with "integrity:" (the checksum)
#   fail-batch     --inject fail-batch=m-0@2     one request fails naming "injected fault (fail-batch=m-0@2)"
#                  (real execution: CudaModelExecution)
#   fail-batch-placeholder  the same with --execution placeholder (the CUDA device's placeholder kernel)
#   stall          --inject stall=0:1500         nothing fails; the first request waits at least 1.5 s
#   scenario       a scenario "faults" section (fail-load=m-1@1, corrupt-load=m-2@2) plus --inject
#                  fail-batch=m-0@2: two requests name "injected fault (", one fails the checksum
#
# Usage: PREBUILT=dir scripts/inject-check.sh [OUT_DIR]  (OUT_DIR: $OUT, else ./inject-out)
# Settings: HOSTMEM_GIB (host memory the weight store may assume, default 16), STEP_TIMEOUT_S
# (per case, default 120), DEVICE (default cuda; host runs the same cases on the host-memory device,
# a dry run of the script without a GPU). Outputs in OUT_DIR: inject-check.log, one log per case, runs.tar.gz
# (each case's summary.json, requests.csv, timeline.json). Exit 0 when every case passed.
set -u
NAME=inject
# shellcheck source=scripts/device-common.sh
source "$(dirname "$0")/device-common.sh"
mkdir -p "$OUTDIR/runs"
HOSTMEM=${HOSTMEM_GIB:-16}
STEP_TIMEOUT=${STEP_TIMEOUT_S:-120}
DEVICE=${DEVICE:-cuda}
SUMMARY=()

scenario() {  # scenario FILE [FAULTS_JSON]
  cat > "$1" <<JSON
{
  "name": "inject-check", "seed": 1,
  "cluster": {"name": "h200x1", "gpus": [{"name": "H200", "memory_gb": 141, "weight_budget_gb": 8,
              "peak_tflops": 989, "hbm_gbps": 4800, "host_link_gbps": 55.3, "host_link_latency_us": 10, "count": 1}]},
  "models": [{"name": "m", "spec": "opt-125m", "count": 3, "gpus": [0], "max_batch": 2}],
  "workload": {"type": "alternating", "requests": 9, "prompt_tokens": 8, "output_tokens": 2},
  "policy": {"name": "computron", "max_loaded_models": 1}${2:+,
  \"faults\": $2}
}
JSON
}

# check RUN_DIR MIN_FIRST_LATENCY_S [REASON COUNT]...: every request once; COUNT rows name each
# REASON (no REASON: none failed); the first request took at least MIN_FIRST_LATENCY_S ("" none).
check() {
  python3 - "$@" <<'PY'
import csv, json, sys
run, min_first = sys.argv[1], sys.argv[2]
expected = list(zip(sys.argv[3::2], map(int, sys.argv[4::2])))
s = json.load(open(f"{run}/summary.json"))
o, arrivals = s["overall"], s["runtime"]["arrivals"]
rows = list(csv.DictReader(open(f"{run}/requests.csv")))
ids = [r["id"] for r in rows]
problems = []
if arrivals != 9: problems.append(f"{arrivals} arrivals, expected 9")
if o["requests"] != arrivals or o["served"] + o["failed"] != arrivals:
    problems.append(f"arrivals {arrivals}, requests {o['requests']}, served {o['served']} + failed {o['failed']}")
if len(ids) != len(set(ids)) or len(ids) != arrivals: problems.append(f"{len(ids)} rows, {len(set(ids))} ids")
for r in rows:
    if r["ok"] == "0" and not r["error"]: problems.append(f"request {r['id']} failed without a reason")
for reason, count in expected:
    named = sum(reason in r["error"] for r in rows)
    if named != count: problems.append(f"{named} rows name '{reason}', expected {count}")
if not expected and o["failed"] != 0: problems.append(f"{o['failed']} requests failed, expected none")
if min_first:
    first = min(rows, key=lambda r: float(r["arrival_s"]))
    if float(first["latency_s"]) < float(min_first):
        problems.append(f"first request latency {first['latency_s']} s < {min_first} s")
print(f"{run}: arrivals {arrivals}, served {o['served']}, failed {o['failed']}; loads failed {s['runtime']['loads_failed']}; "
      f"faults {s['runtime'].get('faults')}")
for r in rows:
    if r["error"]: print(f"  request {r['id']} ({r['model']}): {r['error']}")
for p in problems: print("PROBLEM:", p)
sys.exit(1 if problems else 0)
PY
}

# case NAME SCENARIO_FAULTS "CHECK ARGS" replay-args...
case_() {
  local name=$1 faults=$2 checks=$3; shift 3
  local dir=$OUTDIR/runs/$name t0 rc
  echo; echo "=== $name ($(date -u +%H:%M:%S)): $*${faults:+ + scenario faults $faults}"
  scenario "$OUTDIR/runs/$name.json" "$faults"
  t0=$(date +%s)
  timeout "$STEP_TIMEOUT" "$BIN" replay "$OUTDIR/runs/$name.json" --device "$DEVICE" --host-memory-gib "$HOSTMEM" \
    --max-context 64 -q --out "$dir" "$@" > "$OUTDIR/$name.log" 2>&1
  rc=$?
  cat "$OUTDIR/$name.log"
  if [ $rc -eq 0 ]; then
    eval "check \"\$dir\" $checks"
    rc=$?
  else
    echo "replay exited $rc"
  fi
  local verdict=ok
  [ $rc -eq 0 ] || verdict=FAILED
  SUMMARY+=("$verdict  $(( $(date +%s) - t0 )) s  $name")
}

{
echo "=== machine"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv || echo "nvidia-smi failed"
"$BIN" --version || true

case_ fail-load "" '"" "injected fault (fail-load=m-1@1)" 1' --inject fail-load=m-1@1
case_ corrupt-load "" '"" "integrity:" 3' --inject corrupt-load=m-2
case_ fail-batch "" '"" "injected fault (fail-batch=m-0@2)" 1' --inject fail-batch=m-0@2
case_ fail-batch-placeholder "" '"" "injected fault (fail-batch=m-0@2)" 1' --inject fail-batch=m-0@2 \
  --execution placeholder --placeholder-ms 5
case_ stall "" '1.5' --inject stall=0:1500
case_ scenario '[{"kind": "fail-load", "model": "m-1", "nth": 1}, {"kind": "corrupt-load", "model": "m-2", "nth": 2}]' \
  '"" "injected fault (fail-load=m-1@1)" 1 "integrity:" 1 "injected fault (fail-batch=m-0@2)" 1' \
  --inject fail-batch=m-0@2

echo; echo "=== summary"
for line in "${SUMMARY[@]}"; do echo "$line"; done
tar -czf "$OUTDIR/runs.tar.gz" -C "$OUTDIR" runs
} 2>&1 | tee "$LOG"
exit "$(grep -q '^FAILED' "$LOG" && echo 1 || echo 0)"
