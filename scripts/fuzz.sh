#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/, clang, ASan + UBSan) in build-fuzz/ and runs each for
# SECONDS (default 10) on its seed corpus: the scenario parser, `--set`, each trace reader, the
# profile reader (with `profile merge`), the HF config reader, the safetensors reader and the messages between ranks (runtime/mpi/). Exits non-zero on any crash, hang (a run over
# 30 s) or sanitizer report, leaving the reproducer in build-fuzz/findings/. Prints the
# executions of each harness.
#   scripts/fuzz.sh [SECONDS] [HARNESS...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(fuzz_scenario fuzz_set fuzz_trace_azure fuzz_trace_mooncake fuzz_trace_computron
                                          fuzz_hf_config fuzz_profile fuzz_safetensors fuzz_rank_messages)
jobs=$(nproc 2>/dev/null || echo 2)

if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ is needed (Debian: clang libclang-rt-dev)" >&2
  exit 1
fi
# -O1 with line tables, as fuzzing builds usually are: quick to build, readable stacks.
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE= -DCMAKE_CXX_FLAGS="-O1 -gline-tables-only" -DCMAKE_CXX_COMPILER=clang++ \
  -DCOMPUTRON_FUZZ=ON -DCOMPUTRON_CUDA=OFF -DCOMPUTRON_BUILD_TESTS=OFF -DCOMPUTRON_BUILD_BENCH=OFF \
  -DCOMPUTRON_RUNTIME_MODULE=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" --target "${harnesses[@]}"

# Seed corpora: the shipped inputs (traces cut to their first rows) and fuzz/seeds/.
corpus=build-fuzz/corpus
rm -rf "$corpus" && mkdir -p "$corpus" build-fuzz/findings
seed() {  # seed HARNESS FILE [LINES]
  mkdir -p "$corpus/$1"
  if [ -n "${3:-}" ]; then head -n "$3" "$2" >"$corpus/$1/$(basename "$2")"; else cp "$2" "$corpus/$1/"; fi
}
for f in scenarios/*.json sweeps/*.json; do seed fuzz_scenario "$f"; done
for f in scenarios/profiles/*.json; do seed fuzz_profile "$f"; done
for f in traces/Azure*.csv tests/data/traces/azure*.csv; do [ -f "$f" ] && seed fuzz_trace_azure "$f" 40; done
for f in traces/*.jsonl tests/data/traces/mooncake*.jsonl; do [ -f "$f" ] && seed fuzz_trace_mooncake "$f" 40; done
for f in scenarios/*.csv tests/data/traces/computron*.csv; do [ -f "$f" ] && seed fuzz_trace_computron "$f" 40; done
for f in tests/data/hf_configs/*/config.json; do
  mkdir -p "$corpus/fuzz_hf_config" && cp "$f" "$corpus/fuzz_hf_config/$(basename "$(dirname "$f")").json"
done
for h in "${harnesses[@]}"; do
  mkdir -p "$corpus/$h"
  [ -d "fuzz/seeds/$h" ] && cp fuzz/seeds/"$h"/* "$corpus/$h/" 2>/dev/null || true
done
python3 fuzz/make_safetensors_seeds.py "$corpus/fuzz_safetensors"

status=0
for h in "${harnesses[@]}"; do
  log=build-fuzz/findings/$h.log
  # Each harness writes and reads one scratch file, so it runs as one process.
  if ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1" UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
     "build-fuzz/fuzz/$h" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=4096 -max_len=65536 \
       -artifact_prefix="build-fuzz/findings/$h-" -print_final_stats=1 "$corpus/$h" >"$log" 2>&1; then
    runs=$(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}')
    echo "fuzz: $h: ${runs:-?} executions in ${seconds} s, no findings"
  else
    echo "fuzz: $h: FINDING (log: $log)" >&2
    tail -n 40 "$log" >&2
    status=1
  fi
done
exit $status
