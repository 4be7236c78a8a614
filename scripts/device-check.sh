#!/usr/bin/env bash
# The runtime's check on a GPU machine (two H200s: device kind nvidia-h200-x2). One call does it all:
#   1. build computron and its runtime module (Release, CUDA, no tests or benchmarks)
#   2. integrity: a small swap-test replay on the GPUs, every load checksummed on the device
#   3. the seed's method: scripts/torch_swap_baseline.py (PyTorch per-tensor copies)
#   4. computron bench swap (peaks, runtime rows, multi-path), with the baseline beside it
#   5. the seed's swap test on the GPUs for (TP,PP) in (1,1) (2,1) (1,2), and the simulator on
#      the same scenarios, side by side
# Usage (from the repository root): [PREBUILT=dir] [EXECUTION=real] scripts/device-check.sh [OUT_DIR]
#   EXECUTION: how replay runs batches (default placeholder: a fixed-cost kernel timed by the
#   simulator's cost model, which keeps the swap path the only variable and matches the tables in
#   bench/results/runtime-swap-2026-11-28.md; real: the models' decoders on the GPUs).
#   OUT_DIR defaults to $OUT, else ./device-out; PREBUILT holds the carried computron (and libcomputron-runtime.so, unless built with static Boost).
# Results: device-check.log (everything, tables last), bench_swap.json, torch_baseline.json,
# swap_test.md and outputs.tar.gz (summary/requests/timeline of every run).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUTDIR=${1:-${OUT:-$ROOT/device-out}}
mkdir -p "$OUTDIR"
BUILD=${BUILD:-/tmp/computron-device-build}
# The lent machines start with a small MemTotal that grows as memory is used (KINDS.md), so the
# host-memory check is told the machine's real size rather than detecting it.
HOSTMEM=${HOSTMEM_GIB:-240}
PRESET=${CLUSTER_PRESET:-h200x2}
LOG=$OUTDIR/device-check.log
RUNS=/tmp/computron-device-runs
rm -rf "$RUNS"; mkdir -p "$RUNS"
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
{
step machine
nvidia-smi --query-gpu=index,name,pci.bus_id,memory.total,pcie.link.gen.current,pcie.link.width.current,clocks.sm,clocks.mem --format=csv
nvidia-smi topo -m
echo "cores: $(nproc)"; free -g | head -2

step build
# The GPU machines have Boost headers but no Boost.Program_options library, so the usual way is to
# build here with -DCOMPUTRON_STATIC_BOOST=ON (the CUDA runtime is linked statically too), copy
# computron (the runtime linked in) into an ignored folder and carry it: PREBUILT=that/folder.
if [ -n "${PREBUILT:-}" ] && [ -x "$PREBUILT/computron" ]; then
  RT=$PREBUILT/computron
  SIM=$PREBUILT/computron
  # A static-Boost build has the runtime linked in; a module build carries libcomputron-runtime.so.
  echo "using carried binaries in $PREBUILT"
  ldd "$PREBUILT/computron" $(ls "$PREBUILT/libcomputron-runtime.so" 2>/dev/null) | grep -E "not found|boost|cuda" || true
else
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCOMPUTRON_CUDA=ON -DCOMPUTRON_BUILD_TESTS=OFF \
        -DCOMPUTRON_BUILD_BENCH=OFF > "$RUNS/cmake.log" 2>&1 \
    && cmake --build "$BUILD" -j "$(nproc)" --target computron > "$RUNS/build.log" 2>&1
  RT=$BUILD/computron
  SIM=$BUILD/computron
fi
if [ ! -x "$RT" ]; then
  echo "BUILD FAILED"; tail -40 "$RUNS/cmake.log"; grep -E "error" -A5 "$RUNS/build.log" | head -80; exit 1
fi
echo "built: $RT"

step "integrity: small swap-test replay on the GPUs (opt-1.3b, TP=2; every load checksummed on the device)"
timeout 180 "$RT" replay scenarios/swap-opt13b-tp2pp1.json --set cluster.preset="$PRESET" --set 'models[0].spec=opt-1.3b' \
  --set workload.requests=8 --host-memory-gib "$HOSTMEM" --out "$RUNS/integrity" 2>&1 | tail -12

step "PyTorch per-tensor baseline"
timeout 240 python3 scripts/torch_swap_baseline.py --out "$OUTDIR/torch_baseline.json" 2>&1 | tail -5

step "computron bench swap"
timeout 420 "$RT" bench swap --baseline "$OUTDIR/torch_baseline.json" --json "$OUTDIR/bench_swap.json" \
  --host-memory-gib "$HOSTMEM" > "$RUNS/bench_swap.txt" 2> "$RUNS/bench_swap.err"
echo "exit $?"; tail -5 "$RUNS/bench_swap.err"

step "seed swap test: replay on the GPUs and the simulator"
for tp_pp in "1 1" "2 1" "1 2"; do
  set -- $tp_pp
  name=swap-opt13b-tp$1pp$2
  timeout 200 "$RT" replay scenarios/$name.json --set cluster.preset="$PRESET" --host-memory-gib "$HOSTMEM" \
    --execution "${EXECUTION:-placeholder}" --out "$RUNS/$name-replay" 2>&1 | tail -9
  "$SIM" sim scenarios/$name.json --set cluster.preset="$PRESET" --out "$RUNS/$name-sim" > /dev/null 2>&1
done
python3 - "$RUNS" > "$OUTDIR/swap_test.md" <<'PY'
import json, os, statistics, sys
runs = sys.argv[1]
def spans(d, cat):
    try:
        ev = json.load(open(os.path.join(d, "timeline.json")))["traceEvents"]
    except Exception:
        return []
    groups = {}
    for e in ev:
        if e.get("cat") == cat and e.get("ph") == "X":
            groups.setdefault((e["name"], round(e["ts"], 0)), []).append(e["dur"] / 1000.0)
    return [max(v) for v in groups.values()]  # one swap = all shards, it ends with the slowest
print("| TP,PP | run | requests ok | load ms (mean) | evict ms (mean) | response ms mean | p50 | p99 | swaps | duration s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for tp, pp in ((1, 1), (2, 1), (1, 2)):
    for kind in ("replay", "sim"):
        d = os.path.join(runs, f"swap-opt13b-tp{tp}pp{pp}-{kind}")
        try:
            s = json.load(open(os.path.join(d, "summary.json")))
        except Exception:
            print(f"| {tp},{pp} | {kind} | (no result) |||||||")
            continue
        o = s["overall"]
        loads, evicts = spans(d, "load"), spans(d, "evict")
        mean = lambda v: f"{statistics.mean(v):.1f}" if v else "-"
        label = "GPUs (" + s.get("backend", "?") + ")" if kind == "replay" else "simulator"
        print(f"| {tp},{pp} | {label} | {o['served']}/{o['requests']} | {mean(loads)} | {mean(evicts)} | "
              f"{o['latency_ms']['mean']:.1f} | {o['latency_ms']['p50']:.1f} | {o['latency_ms']['p99']:.1f} | "
              f"{o['swaps']} | {s['duration_s']:.2f} |")
PY

step "results"
cat "$OUTDIR/swap_test.md"
sed -n '1,/^{/p' "$RUNS/bench_swap.txt" | grep -v '^{'
} 2>&1 | tee "$LOG"
cp "$RUNS/bench_swap.txt" "$OUTDIR/" 2>/dev/null
tar -C "$RUNS" -czf "$OUTDIR/outputs.tar.gz" --exclude='*.json.gz' . 2>/dev/null
ls -la "$OUTDIR"
