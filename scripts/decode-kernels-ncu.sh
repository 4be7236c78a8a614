#!/usr/bin/env bash
# Isolated durations of the decode kernels (Nsight Compute, clocks and caches left alone): the
# skinny products, decode attention and its merge, sampling (the first ~400 launches). Kernels
# run one at a time under the profiler, so this shows each kernel's own time, not the overlap
# programmatic dependent launch gives in the real step.
# Usage: BIN=path/to/computron_model_check scripts/decode-kernels-ncu.sh PRESET BATCH
set -u
BIN=${BIN:?set BIN to computron_model_check}
PRESET=${1:-opt-6.7b}; BATCH=${2:-1}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
run() {  # regex skip count
  COMPUTRON_DECODE_GRAPH=0 timeout 150 "$NCU" --metrics gpu__time_duration.sum --clock-control none --cache-control none \
    -k "regex:$1" --launch-skip "$2" --launch-count "$3" --csv "$BIN" bench --preset "$PRESET" --batch "$BATCH" --prompt 512 --new 8 \
    2> /tmp/ncu.err | grep -E '^"' || { tail -5 /tmp/ncu.err; }
}
{ run 'skinny|decodeAttention|decodeCombine|sampleKernel' 0 400; } | python3 -c '
import csv, sys, collections
t = collections.defaultdict(list)
cols = None
for r in csv.reader(sys.stdin):
    if r and r[0] == "ID":
        cols = {c: i for i, c in enumerate(r)}
        continue
    if cols is None or len(r) != len(cols) or r[cols["Metric Name"]] != "gpu__time_duration.sum":
        continue
    name, grid = r[cols["Kernel Name"]].split("(")[0], r[cols["Grid Size"]]
    unit, value = r[cols["Metric Unit"]], float(r[cols["Metric Value"]].replace(",", ""))
    us = {"ns": value / 1e3, "nsecond": value / 1e3, "us": value, "usecond": value, "ms": value * 1e3, "msecond": value * 1e3}.get(unit, value)
    t[(name[:60], grid)].append(us)
for (name, grid), v in sorted(t.items(), key=lambda kv: -sum(kv[1])):
    v.sort()
    print("NCU %-60s grid %-16s n %4d median %8.2f us" % (name, grid, len(v), v[len(v) // 2]))
'
