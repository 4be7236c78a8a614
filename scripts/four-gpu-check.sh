#!/usr/bin/env bash
# The four-GPU run (device kind nvidia-h200-x4), one call, carried binaries (PREBUILT=dir with
# computron built here with -DCOMPUTRON_STATIC_BOOST=ON, which links the runtime in):
#   1. computron bench swap: each GPU's pinned-copy peak alone and all four at once, runtime rows
#   2. the seed's swap test (two OPT-13B, one resident, alternating requests) for (TP,PP) in
#      (1,1) (2,1) (4,1) (1,2) (1,4) (2,2) on the h200x4 preset, real model execution
#   3. the six-model random workload (rates 10,10,1,1,1,1; TP 2 x PP 2) at CV 0.25, 1 and 4
# Usage: PREBUILT=dir scripts/four-gpu-check.sh [OUT_DIR]   (OUT_DIR: $OUT, else ./four-gpu-out)
# Outputs: four-gpu-check.log, bench_swap.json, runs.tar.gz (summary/requests/timeline per run).
# The simulator's side of each run: `computron sim` on the same scenario with --set
# cluster.preset=h200x4 (no GPU needed). Record what a run measures under bench/results/.
set -u
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUTDIR=${1:-${OUT:-$ROOT/four-gpu-out}}
mkdir -p "$OUTDIR/runs"
LOG=$OUTDIR/four-gpu-check.log
: "${PREBUILT:?set PREBUILT to the folder with the carried computron}"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
HOSTMEM=${HOSTMEM_GIB:-400}
BIN=$PREBUILT/computron
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
{
step machine
nvidia-smi --query-gpu=index,name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
nvidia-smi topo -m
echo "cores: $(nproc)"; free -g | head -2

for tp_pp in "1 1" "2 1" "4 1" "1 2" "1 4" "2 2"; do
  set -- $tp_pp
  step "swap test tp$1 pp$2"
  timeout 90 "$BIN" replay scenarios/swap-opt13b-tp$1pp$2.json --device cuda --host-memory-gib "$HOSTMEM" \
    --set cluster.preset=h200x4 --max-context 128 -o "$OUTDIR/runs/swap-tp$1pp$2" || echo "FAILED swap tp$1 pp$2"
done

for cv in 0.25 1 4; do
  step "six-model workload cv $cv"
  timeout 120 "$BIN" replay scenarios/random-6models-rates10-10-1-1-1-1-cv$cv.json --device cuda --host-memory-gib "$HOSTMEM" \
    --set cluster.preset=h200x4 --max-context 128 -o "$OUTDIR/runs/random-cv$cv" || echo "FAILED random cv $cv"
done

step "bench swap (copy peaks alone and all at once)"
timeout 150 "$BIN" bench swap --models opt-13b --reps 3 --warmup 1 --sweep-mib 64 --host-memory-gib "$HOSTMEM" \
  --json "$OUTDIR/bench_swap.json" || echo "FAILED bench swap"

tar -czf "$OUTDIR/runs.tar.gz" -C "$OUTDIR" runs && rm -rf "$OUTDIR/runs"
step done
} 2>&1 | tee -a "$LOG"
