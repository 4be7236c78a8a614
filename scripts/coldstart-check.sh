#!/usr/bin/env bash
# Cold starts with real models on the GPUs (layer-pipelined execution against load-then-run), and the
# model library's speed table with repeated prefill timings beside transformers. One call on a
# 2 x H200 machine (device kind nvidia-h200-x2); carried binaries (the GPU machines lack
# Boost.Program_options): PREBUILT=dir holding computron and computron_model_check, built here with
# -DCOMPUTRON_STATIC_BOOST=ON.
#
#   replay scenarios/coldstart-opt13b-h200.json (two OPT-13B on GPU 0, one resident, alternating
#   requests, each a cold start) with:
#     pipelined   policy.layer_pipelined on, 1 output token          (the goal: <= 1.1 x load time)
#     serial      layer_pipelined off, 1 output token                 (load, then the batch)
#     pipelined32 layer_pipelined on, 32 output tokens                (goal: <= load + warm latency)
#     warm1/warm32  one model only: every request after the first is warm (the warm latency)
#     llama / llama-serial  the same with Llama-3-8B shapes, 1 output token
#     tp2 / tp2-serial  the same models split TP 2 over both GPUs (NCCL), 1 output token
#   then computron_model_check bench (OPT-6.7B, Llama-3-8B; prefill repeated 5 times) and
#   scripts/hf_reference.py bench (transformers eager, the same shapes, same GPU).
# Usage: PREBUILT=dir scripts/coldstart-check.sh [OUT_DIR]  (OUT_DIR: $OUT, else ./coldstart-out)
# COLDSTART_ONLY=1: the replays and only our OPT-6.7B speed row, no transformers runs.
# Outputs: coldstart-check.log and runs.tar.gz (summary.json, requests.csv, timeline.json per run).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUTDIR=${1:-${OUT:-$ROOT/coldstart-out}}
mkdir -p "$OUTDIR/runs"
LOG=$OUTDIR/coldstart-check.log
: "${PREBUILT:?set PREBUILT to the folder with the carried computron and computron_model_check}"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
HOSTMEM=${HOSTMEM_GIB:-200}
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
{
step machine
nvidia-smi --query-gpu=index,name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current --format=csv
echo "cores: $(nproc)"; free -g | head -2
ldd "$PREBUILT/computron" $(ls "$PREBUILT/libcomputron-runtime.so" 2>/dev/null) | grep -E "not found|cublas|nccl" || true
GPUS=$(nvidia-smi -L | wc -l)

SCEN=scenarios/coldstart-opt13b-h200.json
replay() {  # NAME, then --set overrides
  local name=$1; shift
  step "replay $name"
  timeout 240 "$PREBUILT/computron" replay "$SCEN" --device cuda --host-memory-gib "$HOSTMEM" \
    -o "$OUTDIR/runs/$name" "$@" || echo "FAILED replay $name"
}
replay pipelined
replay serial --set policy.layer_pipelined=false
replay pipelined32 --set workload.output_tokens=32
replay warm1 --set 'models[0].count=1'
replay warm32 --set 'models[0].count=1' --set workload.output_tokens=32
replay llama --set 'models[0].spec=llama-3-8b' --set 'models[0].name=llama-3-8b'
replay llama-serial --set 'models[0].spec=llama-3-8b' --set 'models[0].name=llama-3-8b' --set policy.layer_pipelined=false
if [ "$GPUS" -ge 2 ]; then
  replay tp2 --set 'models[0].tp=2' --set 'models[0].gpus=[0,1]'
  replay tp2-serial --set 'models[0].tp=2' --set 'models[0].gpus=[0,1]' --set policy.layer_pipelined=false
fi

tar -czf "$OUTDIR/runs.tar.gz" -C "$OUTDIR" runs && rm -rf "$OUTDIR/runs"
if [ "${COLDSTART_ONLY:-0}" = 1 ]; then
  # Only our decode/prefill speed for OPT-6.7B (a check that the executor's changes cost nothing).
  timeout 100 "$PREBUILT/computron_model_check" bench --preset opt-6.7b --batch 1,8,32 --prompt 512 --new 128 || echo "FAILED bench"
  exit 0
fi
step "speed: ours (prefill repeated)"
for p in opt-6.7b llama-3-8b; do
  timeout 150 "$PREBUILT/computron_model_check" bench --preset $p --batch 1,8,32 --prompt 512 --new 128 || echo "FAILED bench $p"
done
step "speed: transformers eager"
timeout 150 python3 scripts/hf_reference.py bench --arch opt --batch 1,8,32 || echo "FAILED hf bench opt"
timeout 150 python3 scripts/hf_reference.py bench --arch llama --batch 1,8,32 || echo "FAILED hf bench llama"

step summary
grep -hE "^(BENCH|HFBENCH|FAILED)" "$LOG" | sed 's/^/  /'
} 2>&1 | tee -a "$LOG"
