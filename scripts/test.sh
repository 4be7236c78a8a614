#!/usr/bin/env bash
# Builds and runs the whole test suite: the normal build (with CUDA parts when nvcc is found), then
# the runtime's tests under ThreadSanitizer and everything under AddressSanitizer + UBSan (both
# without CUDA, on the host-memory device), then each libFuzzer harness for a bounded time. Build
# folders: build/, build-tsan/, build-asan/, build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs=$(nproc 2>/dev/null || echo 2)
# Line tables only (-g1): stack traces, sanitizer reports and gdb backtraces keep file and line,
# and compiling takes about 30% less than with full debug info (-g) at -O2.
line_tables=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DCMAKE_CXX_FLAGS_DEBUG="-g1")

echo "== build and test (RelWithDebInfo) ($(date -u +%H:%M:%S)) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMPUTRON_WERROR=ON "${line_tables[@]}" >/dev/null
cmake --build build -j"$jobs"
# A test that runs past its timeout fails instead of holding CI (or filling the disk).
ctest --test-dir build --output-on-failure --timeout 600 -j"$jobs"

echo "== runtime tests under ThreadSanitizer ($(date -u +%H:%M:%S)) =="
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMPUTRON_TSAN=ON -DCOMPUTRON_CUDA=OFF \
  -DCOMPUTRON_BUILD_BENCH=OFF "${line_tables[@]}" >/dev/null
if compgen -G "tests/runtime/*_test.cpp" >/dev/null; then
  cmake --build build-tsan -j"$jobs" --target runtime_tests
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ./build-tsan/tests/runtime_tests
fi

echo "== all tests under AddressSanitizer + UndefinedBehaviorSanitizer ($(date -u +%H:%M:%S)) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCOMPUTRON_ASAN=ON -DCOMPUTRON_CUDA=OFF \
  -DCOMPUTRON_BUILD_BENCH=OFF "${line_tables[@]}" >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS="detect_leaks=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  ctest --test-dir build-asan --output-on-failure --timeout 900 -j"$jobs"

echo "== fuzzing: every input reader for a bounded time (clang, libFuzzer, ASan + UBSan) ($(date -u +%H:%M:%S)) =="
# Eight harnesses x 5 s; the long recorded run is in bench/results/fuzzing-*.md.
scripts/fuzz.sh "${COMPUTRON_FUZZ_SECONDS:-5}"
echo "all tests passed ($(date -u +%H:%M:%S))"
