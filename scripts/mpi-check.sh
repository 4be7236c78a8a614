#!/usr/bin/env bash
# The runtime over several processes on a GPU machine, one call (device machine; one GPU is
# enough, two use one rank per GPU):
#  1. the machine: GPUs, Open MPI, the binary's libraries;
#  2. a swapping workload (OPT-13B copies on the GPUs, one-token requests, Gamma CV 4,
#     placeholder execution timed by the cost model, so the swap path is the variable), replayed
#     MPI_REPEATS times in one process and under mpirun: one GPU: `-np 2 --engine-only` (rank 0
#     the engine, rank 1 the GPU); two GPUs: `-np 2` (one GPU per rank, the TP 2 model across
#     both ranks), or with MPI_REAL=1 `-np 3 --engine-only --gpus-per-rank 1` (rank 0 the
#     engine, the TP 2 group across ranks 1 and 2); each pair of runs in turn, each with its
#     command log, and with MPI_REAL=1 each with its generated tokens (--token-log), compared;
#  3. `computron compare` of each pair, and per-GPU shard load rates, into mpi-summary.json;
#  4. with MPI_KILL=1: the same under mpirun with the last rank killed (SIGKILL) mid-run, then
#     a check that every request ended exactly once, served or failed naming the lost rank.
# Usage: OUT=dir BIN=build-prebuilt/computron scripts/mpi-check.sh
# MPI_DURATION (default 40) seconds of workload per run, MPI_REPEATS (default 2); MPI_REAL=1
# runs the models' real decoders (random weights, MPI_SPEC default opt-6.7b, 32 output tokens)
# instead of the placeholder, the GPU ranks executing them (one GPU: --engine-only); MPI_DEVICE
# (default cuda) and MPI_SPEC (default opt-13b) let the script itself be tried on the host device
# with a small model.
set -u
export NCCL_NVLS_ENABLE=0
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
OUT=${OUT:-$PWD/mpi-out}
BIN=${BIN:-build-prebuilt/computron}
DUR=${MPI_DURATION:-40}
REPEATS=${MPI_REPEATS:-2}
DEVICE=${MPI_DEVICE:-cuda}
REAL=${MPI_REAL:-0}
if [ "$REAL" = 1 ]; then SPEC=${MPI_SPEC:-opt-6.7b}; EXEC=real; OUTPUT=32; BUDGET=30; else SPEC=${MPI_SPEC:-opt-13b}; EXEC=placeholder; OUTPUT=1; BUDGET=60; fi
mkdir -p "$OUT"
LOG=$OUT/mpi-check.log
exec > >(tee -a "$LOG") 2>&1
step() { echo "=== $(date +%T) $*"; }

step machine
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  NGPU=$(nvidia-smi -L | wc -l)
else
  NGPU=${MPI_GPUS:-1}
fi
command -v mpirun && mpirun --version | head -1
ldd "$BIN" | grep -E "libmpi|not found"; ls /usr/lib/x86_64-linux-gnu/ | grep -E "^libmpi" | head -3
if ldd "$BIN" | grep -q "not found"; then echo "missing libraries: stop"; exit 1; fi

PRESET=h200x2
if [ "$NGPU" -ge 2 ]; then
  MODELS="[{\"name\": \"m\", \"spec\": \"$SPEC\", \"count\": 4, \"tp\": 2, \"gpus\": [0, 1], \"max_batch\": 8}]"
  RATES='[1, 1, 1, 1]'
  MPI_ARGS=(-np 2)
  APP_ARGS=(--gpus-per-rank 1)
  LAYOUT="two GPUs, one rank each (TP 2 across the ranks)"
  if [ "$REAL" = 1 ]; then  # rank 0 the engine; the TP 2 group spans ranks 1 and 2 (NCCL id shared over MPI)
    MPI_ARGS=(-np 3)
    APP_ARGS=(--engine-only --gpus-per-rank 1)
    LAYOUT="two GPUs, ranks 1 and 2 one each (TP 2 across the ranks), rank 0 the engine"
  fi
else
  MODELS="[{\"name\": \"m\", \"spec\": \"$SPEC\", \"count\": 3, \"tp\": 1, \"gpus\": [0], \"max_batch\": 8}]"
  RATES='[1, 1, 1]'
  MPI_ARGS=(-np 2)
  APP_ARGS=(--engine-only)
  LAYOUT="one GPU: rank 0 the engine, rank 1 the GPU"
  PRESET=h200x1  # the single-process run's cluster must not name GPUs the machine lacks
fi
cat > "$OUT/scenario.json" <<JSON
{"name": "mpi-swap", "seed": 5, "duration_s": $DUR,
 "cluster": {"preset": "$PRESET", "weight_budget_gb": $BUDGET},
 "models": $MODELS,
 "workload": {"type": "gamma", "rates": $RATES, "cv": 4, "prompt_tokens": 64, "output_tokens": $OUTPUT},
 "policy": {"name": "computron", "max_loaded_models": 2}, "slo_ms": 1000}
JSON
step "layout: $LAYOUT"

for i in $(seq 1 "$REPEATS"); do  # MPI_REPEATS=0 skips the comparison
  TOKENS_ONE=(); TOKENS_MPI=()
  if [ "$REAL" = 1 ]; then TOKENS_ONE=(--token-log "$OUT/one-$i.tokens"); TOKENS_MPI=(--token-log "$OUT/mpi-$i.tokens"); fi
  step "run $i: one process"
  "$BIN" replay "$OUT/scenario.json" --device "$DEVICE" --execution "$EXEC" --quiet --out "$OUT/one-$i" \
    --command-log "$OUT/one-$i.log" "${TOKENS_ONE[@]}" | tail -3
  step "run $i: mpirun ${MPI_ARGS[*]} ... ${APP_ARGS[*]}"
  mpirun "${MPI_ARGS[@]}" --enable-recovery --bind-to none "$BIN" replay "$OUT/scenario.json" --device "$DEVICE" \
    --execution "$EXEC" --quiet --out "$OUT/mpi-$i" --command-log "$OUT/mpi-$i.log" "${TOKENS_MPI[@]}" "${APP_ARGS[@]}" | tail -3
  if diff -q "$OUT/one-$i.log" "$OUT/mpi-$i.log" >/dev/null; then echo "commands: identical"; else
    echo "commands: differ ($(diff "$OUT/one-$i.log" "$OUT/mpi-$i.log" | grep -c '^[<>]') lines)"; fi
  if [ "$REAL" = 1 ]; then
    # Tokens: each GPU rank wrote the requests of the models whose first shard it holds.
    sort "$OUT/one-$i.tokens" > "$OUT/one-$i.tokens.sorted"
    cat "$OUT"/mpi-$i.tokens.rank* 2>/dev/null | sort > "$OUT/mpi-$i.tokens.sorted"
    if [ ! -s "$OUT/one-$i.tokens.sorted" ]; then echo "tokens: FAILED, none written (request-level batches only)"; else
    echo "tokens: $(wc -l < "$OUT/one-$i.tokens.sorted") requests in one process, $(wc -l < "$OUT/mpi-$i.tokens.sorted") under mpirun;" \
      "$(cmp -s "$OUT/one-$i.tokens.sorted" "$OUT/mpi-$i.tokens.sorted" && echo identical || echo DIFFER)"; fi
  fi
  "$BIN" compare "$OUT/one-$i" "$OUT/mpi-$i" --overall-only | head -20
done

if [ "${MPI_KILL:-0}" = 1 ]; then
  step "kill: mpirun ${MPI_ARGS[*]} ... ${APP_ARGS[*]}, rank $(( ${MPI_ARGS[1]} - 1 )) killed after 15 s"
  mpirun "${MPI_ARGS[@]}" --enable-recovery --bind-to none "$BIN" replay "$OUT/scenario.json" --device "$DEVICE" \
    --execution "$EXEC" --out "$OUT/kill" --rank-timeout-s 2 "${APP_ARGS[@]}" > "$OUT/kill.txt" 2>&1 &
  runner=$!
  victim=""
  for _ in $(seq 1 600); do
    for p in $(pgrep -f "replay $OUT/scenario.json" || true); do
      if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$(( ${MPI_ARGS[1]} - 1 ))"; then victim=$p; fi
    done
    [ -n "$victim" ] && break
    sleep 0.1
  done
  # The run starts once the host store is built; give it 15 s of serving.
  while ! grep -q "execution" "$OUT/kill.txt" 2>/dev/null; do sleep 0.5; done
  sleep 15
  t_kill=$(date +%s.%N)
  kill -9 "$victim"
  wait $runner
  t_end=$(date +%s.%N)
  tail -4 "$OUT/kill.txt"
  echo "the run ended $(python3 -c "print(round($t_end - $t_kill, 1))") s after the kill"
  python3 - "$OUT/kill" <<'PY'
import csv, json, sys
out = sys.argv[1]
s = json.load(open(out + "/summary.json"))
rows = list(csv.DictReader(open(out + "/requests.csv")))
ids = [r["id"] for r in rows]
print("requests", len(rows), "unique", len(set(ids)), "arrivals", s["runtime"]["arrivals"],
      "served", s["overall"]["served"], "failed", s["overall"]["failed"])
reasons = sorted({r["error"].split(":")[0] for r in rows if r["ok"] != "1"})
print("failure reasons:", reasons)
print("ranks:", [(r["rank"], r["lost"], r["reason"], r["jobs_failed_on_loss"]) for r in s["runtime"]["ranks"]])
PY
fi

[ "$REPEATS" -gt 0 ] || exit 0
step summary
python3 - "$OUT" "$REPEATS" <<'PY'
import json, statistics, sys
out, repeats = sys.argv[1], int(sys.argv[2])
rows = []
for i in range(1, repeats + 1):
    row = {}
    for kind in ("one", "mpi"):
        s = json.load(open(f"{out}/{kind}-{i}/summary.json"))
        o, rt = s["overall"], s["runtime"]
        row[kind] = {"mean_ms": o["latency_ms"]["mean"], "p50_ms": o["latency_ms"]["p50"], "p99_ms": o["latency_ms"]["p99"],
                     "served": o["served"], "swaps": o.get("swaps"), "load_gbps": rt["mean_shard_load_gbps"],
                     "load_gbps_per_gpu": rt.get("mean_shard_load_gbps_per_gpu"), "ranks": rt.get("ranks")}
        row[kind]["commands_identical"] = open(f"{out}/one-{i}.log").read() == open(f"{out}/mpi-{i}.log").read()
    row["mean_ratio"] = row["mpi"]["mean_ms"] / row["one"]["mean_ms"]
    if i > 1:  # run-to-run noise of one process, for scale
        prev = json.load(open(f"{out}/one-{i-1}/summary.json"))["overall"]["latency_ms"]["mean"]
        row["one_vs_previous_one_mean_ratio"] = row["one"]["mean_ms"] / prev
        row["one_commands_identical_to_previous_one"] = open(f"{out}/one-{i}.log").read() == open(f"{out}/one-{i-1}.log").read()
    row["load_rate_ratio"] = row["mpi"]["load_gbps"] / row["one"]["load_gbps"]
    rows.append(row)
summary = {"runs": rows,
           "median_mean_ratio": statistics.median(r["mean_ratio"] for r in rows),
           "median_load_rate_ratio": statistics.median(r["load_rate_ratio"] for r in rows)}
json.dump(summary, open(f"{out}/mpi-summary.json", "w"), indent=1)
for i, r in enumerate(rows, 1):
    print(f"run {i}: mean {r['one']['mean_ms']:.1f} ms one process, {r['mpi']['mean_ms']:.1f} ms mpirun "
          f"(x{r['mean_ratio']:.3f}); load {r['one']['load_gbps']:.2f} vs {r['mpi']['load_gbps']:.2f} GB/s "
          f"(x{r['load_rate_ratio']:.3f}); served {r['one']['served']} / {r['mpi']['served']}; "
          f"commands identical: {r['one']['commands_identical']}"
          + (f"; one process against its previous run: mean x{r['one_vs_previous_one_mean_ratio']:.3f}, commands identical "
             f"{r['one_commands_identical_to_previous_one']}" if "one_vs_previous_one_mean_ratio" in r else ""))
print(f"median mean-latency ratio {summary['median_mean_ratio']:.3f}, load-rate ratio {summary['median_load_rate_ratio']:.3f}")
PY
