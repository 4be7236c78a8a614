#!/usr/bin/env bash
# Tensor-parallel decode on a 2-GPU machine (device kind nvidia-h200-x2), one call:
#  1. the peer collectives (all-reduce, all-gather) against a host reference, then their time
#     against NCCL's all-reduce for decode-sized messages (computron_model_check collectives);
#  2. decode speed against the bandwidth bound for OPT-13B and Llama-2-13B (random weights,
#     512-token prompts, 128 new tokens, batch 1, 8 and 32): TP 2 with the peer collectives and
#     whole-step CUDA graphs (the default), TP 2 on NCCL (COMPUTRON_PEER_COLLECTIVES=0), TP 1;
#  3. TDC_CORRECTNESS=1: scripts/model-check.sh's quick correctness run (small OPT, Llama, Qwen2
#     and Mistral models against transformers, TP 2 and PP 2 against TP 1, greedy tokens equal);
#  4. TDC_REPLAYS=1 (needs computron in $PREBUILT too): why GPU replays with swapping ran slower
#     with the peer path: $TDC_REPLAY_SCENARIO (default
#     scenarios/fidelity/fidelity-6m-cv1-32tok-computron.json) replayed with the runtime's NCCL
#     path, with COMPUTRON_PEER_COLLECTIVES=1, and with that and COMPUTRON_DECODE_GRAPH=0; mean,
#     p50 and p99 latency of each (REPLAY lines).
# Usage: PREBUILT=dir (holding computron_model_check built with CUDA) OUT=dir scripts/tp-decode-check.sh
# TDC_PRESETS (default "opt-13b llama-2-13b"), TDC_BATCHES (default 1,8,32), TDC_MODES (default
# "peer nccl tp1").
set -u
export NCCL_NVLS_ENABLE=0
OUT=${OUT:-$PWD/tp-decode-out}
BIN=${PREBUILT:-build-prebuilt}/computron_model_check
mkdir -p "$OUT"
LOG=$OUT/tp-decode-check.log
exec > >(tee -a "$LOG") 2>&1
step() { echo "=== $(date +%T) $*"; }
step machine
nvidia-smi --query-gpu=index,name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv,noheader
nvidia-smi topo -m | head -5
step "peer collectives: check and time"
timeout 120 "$BIN" collectives --tp 2 || echo "FAILED collectives (exit $?)"
for mode in ${TDC_MODES:-peer nccl tp1}; do
  for p in ${TDC_PRESETS:-opt-13b llama-2-13b}; do
    step "decode $p, $mode"
    case $mode in
      peer) timeout 150 "$BIN" bench --preset "$p" --batch "${TDC_BATCHES:-1,8,32}" --prompt 512 --new 128 --tp 2 ;;
      nccl) COMPUTRON_PEER_COLLECTIVES=0 timeout 150 "$BIN" bench --preset "$p" --batch "${TDC_BATCHES:-1,8,32}" --prompt 512 --new 128 --tp 2 ;;
      tp1) timeout 150 "$BIN" bench --preset "$p" --batch "${TDC_BATCHES:-1,8,32}" --prompt 512 --new 128 --tp 1 ;;
    esac || echo "FAILED bench $p $mode (exit $?)"
  done
done
if [ "${TDC_CORRECTNESS:-0}" = 1 ]; then
  step "correctness: scripts/model-check.sh quick"
  MODEL_CHECK_QUICK=1 MODEL_CHECK_SKIP_SPEED=1 OUT=$OUT/model-check timeout 400 scripts/model-check.sh > /dev/null 2>&1 \
    || echo "FAILED model-check (exit $?)"
  grep -hE "^  (COMPARE|SAME|REFUSAL|REPLAY|FAILED)" "$OUT/model-check/model-check.log" || tail -20 "$OUT/model-check/model-check.log"
fi
if [ "${TDC_REPLAYS:-0}" = 1 ]; then
  SC=${TDC_REPLAY_SCENARIO:-scenarios/fidelity/fidelity-6m-cv1-32tok-computron.json}
  for cfg in "nccl COMPUTRON_PEER_COLLECTIVES=0" "peer COMPUTRON_PEER_COLLECTIVES=1" \
             "peer-nograph COMPUTRON_PEER_COLLECTIVES=1 COMPUTRON_DECODE_GRAPH=0"; do
    set -- $cfg
    name=$1; shift
    step "replay $(basename "$SC" .json), $name"
    env "$@" timeout 150 "${PREBUILT:-build-prebuilt}/computron" replay "$SC" --device cuda --host-memory-gib 200 \
      -o "$OUT/replay-$name" -q || echo "FAILED replay $name (exit $?)"
    python3 -c 'import json, sys
o = json.load(open(sys.argv[1] + "/summary.json"))["overall"]
print("REPLAY", sys.argv[2], "mean %.1f p50 %.1f p99 %.1f swaps %s" % (o["latency_ms"]["mean"], o["latency_ms"]["p50"], o["latency_ms"]["p99"], o["swaps"]))' \
      "$OUT/replay-$name" "$name" || true
  done
fi
step summary
grep -hE "^(CCHECK .*(overall|FAIL)|COLL|BENCH|REPLAY|FAILED)" "$LOG" | sed 's/^/  /'
