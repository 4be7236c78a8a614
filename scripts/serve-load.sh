#!/usr/bin/env bash
# Issue 16's load record: `computron serve --device host` (placeholder execution) against
# `computron bench serve` with 10,000 requests from a pool of 1,000 keep-alive connections, all on
# 127.0.0.1. Per run: every request answered exactly once (the generator's check), the server's
# CPU time per request (utime + stime of the server process from /proc/PID/stat, before and after
# the load), and the p50/p99 latency the HTTP path adds over the server's own
# (`computron.latency_ms`, docs/serving.md). Prints one line per run and the medians.
#
#   scripts/serve-load.sh [BUILD_DIR] [RUNS] [CONNECTIONS]     (defaults: build-h16 3 1000)
#
# Bounded: each server runs under `timeout`, bench serve gives up after 300 s.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-h16}
RUNS=${2:-3}
CONNECTIONS=${3:-1000}
BIN="$BUILD/computron"
SCENARIO=bench/results/serve-load-2026-12-01.json
OUT=$(mktemp -d /tmp/serve-load.XXXXXX)
TICKS=$(getconf CLK_TCK)
[ -x "$BIN" ] || { echo "no $BIN: build the computron target first" >&2; exit 2; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

results=()
for run in $(seq 1 "$RUNS"); do
  log="$OUT/serve-$run.log"
  timeout -s INT 900 "$BIN" serve "$SCENARIO" --device host --execution placeholder --placeholder-ms 1 \
      --port 0 --max-queued 2000 --http-threads 2 >"$log" 2>&1 &
  wrapper=$!
  port=""
  for _ in $(seq 1 600); do
    port=$(sed -n 's|^serve: listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$log" | head -1)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "server did not start:" >&2; cat "$log" >&2; kill -INT "$wrapper"; exit 1; }
  server=$(pgrep -P "$wrapper" | head -1)
  before=$(cpu_ticks "$server")
  start=$(date +%s.%N)
  set +e
  "$BIN" bench serve --url "http://127.0.0.1:$port" "$SCENARIO" --connections "$CONNECTIONS" --threads 2 \
      --time-limit-s 300 --json --no-files >"$OUT/summary-$run.json" 2>"$OUT/bench-$run.err"
  rc=$?
  set -e
  wall=$(echo "$(date +%s.%N) - $start" | bc)
  after=$(cpu_ticks "$server")
  kill -INT "$wrapper"
  wait "$wrapper" || true
  line=$(python3 - "$OUT/summary-$run.json" "$before" "$after" "$TICKS" "$wall" "$rc" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
b = s["bench_serve"]
before, after, ticks, wall, rc = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
cpu_ms = (after - before) * 1000.0 / ticks / max(1, b["sent"])
a = b["added_latency_ms"]
print(f'{b["sent"]} {b["ok"]} {b["failed"]} {str(b["exactly_once"]).lower()} {b["unanswered"]} {b["answered_twice"]} '
      f'{cpu_ms:.3f} {a["p50"]:.3f} {a["p99"]:.3f} {b["max_backlog"]} {wall:.1f} {rc} {b["connects"]}')
PY
)
  echo "run $run: sent ok failed exactly_once unanswered twice cpu_ms/req added_p50_ms added_p99_ms max_backlog wall_s rc connects"
  echo "run $run: $line"
  results+=("$line")
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
med = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"median of {len(rows)}: server CPU {med(6):.3f} ms/request, added latency p50 {med(7):.3f} ms, p99 {med(8):.3f} ms, wall {med(10):.1f} s")
print("exactly once in every run:", all(r[3] == "true" for r in rows))'
echo "outputs in $OUT"
