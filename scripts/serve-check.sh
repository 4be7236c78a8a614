#!/usr/bin/env bash
# `computron serve` on GPUs, one call (2 x H200: device kind nvidia-h200-x2). Carried binary:
# PREBUILT=dir holding computron built with -DCOMPUTRON_STATIC_BOOST=ON (the runtime linked in).
#
#   1. machine
#   2. tokenizer fixtures: scripts/make_tokenizer_fixtures.py with the `tokenizers` library
#      (tokenizer.json files of the OPT, Llama 3 and Llama 2 kinds, and the ids it gives for a
#      fixed list of strings) -> $OUT/tokenizers; `computron tokenize` on the same files beside it
#      when the build has it
#   3. real tokens: a small OPT checkpoint (scripts/hf_reference.py make), served with real
#      execution; scripts/serve_reference.py compares greedy ids (plain and streamed) with
#      transformers fp32, checks seeded sampling repeats and stop_token_ids
#   4. serve against replay: each of SERVE_SCENARIOS (default the 3-model OPT-13B TP 2, CV 1,
#      32-token fidelity case) replayed with `computron replay`, then served by `computron serve`
#      and driven by `computron bench serve` at the same arrival times; `computron compare` of the two
#
# Usage: PREBUILT=dir scripts/serve-check.sh [OUT_DIR]  (OUT_DIR: $OUT, else ./serve-out)
# Settings: HOSTMEM_GIB (default 200), STEP_TIMEOUT_S (default 300), SERVE_SCENARIOS (space separated),
# SERVE_MPI=1: step 3 again with the server under `mpirun -np 2 ... --engine-only` (one GPU is enough);
# SERVE_SKIP_SINGLE=1 skips step 3's one-process run, SERVE_SCENARIOS="" skips step 4;
# SERVE_ITERATION=1: step 3 again with `"batching": "iteration"` (the session steps' served path).
set -u
NAME=serve
# shellcheck source=scripts/device-common.sh
source "$(dirname "$0")/device-common.sh"
HOSTMEM=${HOSTMEM_GIB:-200}
STEP_TIMEOUT=${STEP_TIMEOUT_S:-300}
SCENARIOS=${SERVE_SCENARIOS-scenarios/fidelity/fidelity-3m-cv1-32tok-computron.json}
WORK=/tmp/serve-check
# On a one-GPU machine every run uses a one-GPU cluster (a cluster naming GPUs the machine lacks is
# refused by replay and serve); the scenarios' models must then sit on GPU 0.
CLUSTER_SET=()
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" = 1 ]; then CLUSTER_SET=(--set 'cluster.preset="h200x1"'); fi
rm -rf "$WORK"; mkdir -p "$WORK"
SUMMARY=()
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
note() { SUMMARY+=("$1"); echo "--- $1"; }

# Starts `computron serve` in the background on a free port; sets SERVE_PID and URL. LAUNCH (an
# array, default empty) prefixes the command (the mpirun step).
LAUNCH=()
start_server() {
  local log=$1; shift
  "${LAUNCH[@]}" "$BIN" serve "$@" --port 0 --device cuda --host-memory-gib "$HOSTMEM" > "$log.out" 2> "$log.err" &
  SERVE_PID=$!
  URL=""
  for _ in $(seq 1 600); do
    URL=$(grep -o 'http://[0-9.]*:[0-9]*' "$log.out" 2>/dev/null | head -1)
    [ -n "$URL" ] && break
    kill -0 $SERVE_PID 2>/dev/null || break
    sleep 0.5
  done
  for _ in $(seq 1 100); do
    curl -sf "$URL/health" > /dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "serve did not come up:"; cat "$log.out" "$log.err"
  return 1
}
stop_server() {
  kill -INT "$SERVE_PID" 2>/dev/null
  for _ in $(seq 1 120); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$SERVE_PID" 2>/dev/null
  wait "$SERVE_PID" 2>/dev/null
  echo "serve exit: $?"
}

{
step machine
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv || echo "nvidia-smi failed"
echo "cores: $(nproc)"; free -g | head -2
git rev-parse --short HEAD 2>/dev/null || true

step "tokenizer fixtures (HF tokenizers)"
if [ -f scripts/make_tokenizer_fixtures.py ]; then
  if timeout "$STEP_TIMEOUT" python3 scripts/make_tokenizer_fixtures.py "$OUTDIR/tokenizers"; then
    note "ok      tokenizer fixtures in $OUTDIR/tokenizers"
    tar czf "$OUTDIR/tokenizers.tar.gz" -C "$OUTDIR" tokenizers
  else
    note "FAILED  tokenizer fixtures"
  fi
else
  note "skipped tokenizer fixtures (no scripts/make_tokenizer_fixtures.py)"
fi

step "real tokens against transformers"
python3 scripts/hf_reference.py make --arch opt --layers 4 --hidden 1024 --heads 16 --kv-heads 16 --ffn 4096 \
  --vocab 32000 --out "$WORK/opt4" --seed 3 > "$OUTDIR/make-opt4.log" 2>&1 || echo "make failed: $(tail -3 "$OUTDIR/make-opt4.log")"
# The OPT-style tokenizer made in step 2 goes into the checkpoint folder: text prompts and outputs.
TOKFOLDER=""
if [ -f "$OUTDIR/tokenizers/opt-style/tokenizer.json" ]; then
  cp "$OUTDIR/tokenizers/opt-style/tokenizer.json" "$WORK/opt4/" && TOKFOLDER=$WORK/opt4
fi
if [ "${SERVE_SKIP_SINGLE:-0}" = 1 ]; then
  note "skipped real tokens in one process (SERVE_SKIP_SINGLE=1)"
elif start_server "$OUTDIR/serve-ref" scenarios/coldstart-opt13b-h200.json --checkpoint "opt4=$WORK/opt4" \
     --set "models[0].spec={\"hf_config\": \"$WORK/opt4/config.json\"}" --set 'models[0].name=opt4' --set 'models[0].count=1' "${CLUSTER_SET[@]}"; then
  if timeout "$STEP_TIMEOUT" python3 scripts/serve_reference.py --url "$URL" --model opt4 --checkpoint "$WORK/opt4" \
       ${TOKFOLDER:+--tokenizer-folder "$TOKFOLDER"} > "$OUTDIR/serve-reference.log" 2>&1; then
    note "ok      real tokens: $(grep -c 'SERVE-REF ok' "$OUTDIR/serve-reference.log") checks"
  else
    note "FAILED  real tokens: $(grep -c 'SERVE-REF FAIL' "$OUTDIR/serve-reference.log") of $(grep -c 'SERVE-REF' "$OUTDIR/serve-reference.log") checks failed"
  fi
  tail -30 "$OUTDIR/serve-reference.log"
  curl -s "$URL/metrics" | grep -E "^computron_(requests_total|generation_tokens_total)" | head -8
  stop_server
  tail -25 "$OUTDIR/serve-ref.err"
else
  note "FAILED  real tokens: server did not start"
fi

if [ "${SERVE_ITERATION:-0}" = 1 ]; then
  # The same checks with iteration-level batching: the session's steps take each request's own
  # prompt and sampling (CudaModelExecution::runStep) and stream its tokens per step.
  step "real tokens against transformers, iteration-level batching"
  if start_server "$OUTDIR/serve-iter" scenarios/coldstart-opt13b-h200.json --checkpoint "opt4=$WORK/opt4" \
       --set 'policy.batching="iteration"' --set policy.layer_pipelined=false \
       --set "models[0].spec={\"hf_config\": \"$WORK/opt4/config.json\"}" --set 'models[0].name=opt4' --set 'models[0].count=1' "${CLUSTER_SET[@]}"; then
    if timeout "$STEP_TIMEOUT" python3 scripts/serve_reference.py --url "$URL" --model opt4 --checkpoint "$WORK/opt4" \
         ${TOKFOLDER:+--tokenizer-folder "$TOKFOLDER"} > "$OUTDIR/serve-iter-reference.log" 2>&1; then
      note "ok      real tokens, iteration batching: $(grep -c 'SERVE-REF ok' "$OUTDIR/serve-iter-reference.log") checks"
    else
      note "FAILED  real tokens, iteration batching: $(grep -c 'SERVE-REF FAIL' "$OUTDIR/serve-iter-reference.log") of $(grep -c 'SERVE-REF' "$OUTDIR/serve-iter-reference.log") checks failed"
    fi
    tail -30 "$OUTDIR/serve-iter-reference.log"
    stop_server
    tail -25 "$OUTDIR/serve-iter.err"
  else
    note "FAILED  real tokens, iteration batching: server did not start"
  fi
fi

if [ "${SERVE_MPI:-0}" = 1 ]; then
  # The same checks with the server under mpirun: rank 0 the engine and the HTTP server, rank 1
  # the GPU(s) running the model; prompts and sampling travel to rank 1, tokens come back. With
  # SERVE_ITERATION=1, once more with iteration-level batching (payloads with every step).
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  LAUNCH=(mpirun -np 2 --bind-to none --enable-recovery)
  MPI_BATCHINGS=request
  [ "${SERVE_ITERATION:-0}" = 1 ] && MPI_BATCHINGS="request iteration"
  for b in $MPI_BATCHINGS; do
  tag=serve-mpi; [ "$b" = iteration ] && tag=serve-mpi-iter
  step "real tokens against transformers, served under mpirun (--engine-only), $b batching"
  # Layer-pipelined batches (the scenario's policy) do not run across ranks yet.
  if start_server "$OUTDIR/$tag" scenarios/coldstart-opt13b-h200.json --checkpoint "opt4=$WORK/opt4" --engine-only --set policy.layer_pipelined=false \
       --set "policy.batching=\"$b\"" \
       --set "models[0].spec={\"hf_config\": \"$WORK/opt4/config.json\"}" --set 'models[0].name=opt4' --set 'models[0].count=1' "${CLUSTER_SET[@]}"; then
    if timeout "$STEP_TIMEOUT" python3 scripts/serve_reference.py --url "$URL" --model opt4 --checkpoint "$WORK/opt4" \
         ${TOKFOLDER:+--tokenizer-folder "$TOKFOLDER"} > "$OUTDIR/$tag-reference.log" 2>&1; then
      note "ok      real tokens under mpirun, $b batching: $(grep -c 'SERVE-REF ok' "$OUTDIR/$tag-reference.log") checks"
    else
      note "FAILED  real tokens under mpirun, $b batching: $(grep -c 'SERVE-REF FAIL' "$OUTDIR/$tag-reference.log") of $(grep -c 'SERVE-REF' "$OUTDIR/$tag-reference.log") checks failed"
    fi
    tail -30 "$OUTDIR/$tag-reference.log"
    stop_server
    tail -25 "$OUTDIR/$tag.err"
  else
    note "FAILED  real tokens under mpirun, $b batching: server did not start"
  fi
  done
  LAUNCH=()
fi

for SCEN in $SCENARIOS; do
base=$(basename "$SCEN" .json)
step "serve against replay: $base"
if timeout "$STEP_TIMEOUT" "$BIN" replay "$SCEN" --device cuda --execution real --host-memory-gib "$HOSTMEM" \
     "${CLUSTER_SET[@]}" -o "$WORK/$base/replay" -q > "$OUTDIR/$base-replay.log" 2>&1; then
  note "ok      replay $base"
else
  note "FAILED  replay $base (exit $?): $(tail -2 "$OUTDIR/$base-replay.log")"
fi
if start_server "$OUTDIR/$base-serve" "$SCEN" --execution real "${CLUSTER_SET[@]}"; then
  if timeout "$STEP_TIMEOUT" "$BIN" bench serve --url "$URL" "$SCEN" "${CLUSTER_SET[@]}" --out "$WORK/$base/bench-serve" > "$OUTDIR/$base-bench-serve.log" 2>&1; then
    note "ok      bench serve $base"
  else
    note "FAILED  bench serve $base: $(tail -2 "$OUTDIR/$base-bench-serve.log")"
  fi
  curl -s "$URL/metrics" | grep -E "^computron_(requests_total|model_loads_total)" > "$OUTDIR/$base-serve-metrics.txt"
  stop_server
  tail -25 "$OUTDIR/$base-serve.err"
fi
"$BIN" compare "$WORK/$base/replay" "$WORK/$base/bench-serve" > "$OUTDIR/$base-compare.txt" 2>&1; echo "compare exit $?"
grep -E "^all" "$OUTDIR/$base-compare.txt"
done
(cd "$WORK" && tar czf "$OUTDIR/serve-runs.tar.gz" --exclude=opt4 . 2>/dev/null)

step summary
printf '%s\n' "${SUMMARY[@]}"
} 2>&1 | tee "$LOG"
# Two files come back: the log and one archive of everything else (the device returns few files).
(cd "$OUTDIR" && tar czf /tmp/serve-files.tar.gz --exclude=serve-check.log . && \
  find . -mindepth 1 ! -name serve-check.log -exec rm -rf {} + && mv /tmp/serve-files.tar.gz .)
