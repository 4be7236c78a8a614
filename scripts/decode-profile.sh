#!/usr/bin/env bash
# Where a decode step's time goes: one `computron_model_check bench` run (one preset, one batch
# size) under Nsight Systems with CUDA-graph nodes traced, then, for the last decode steps, each
# kernel's summed time and the idle gaps between kernels, per kernel name.
# Usage: BIN=path/to/computron_model_check scripts/decode-profile.sh PRESET BATCH [OUT_DIR]
set -u
BIN=${BIN:?set BIN to computron_model_check}
PRESET=${1:-opt-6.7b}; BATCH=${2:-1}; OUTDIR=${3:-${OUT:-./decode-profile-out}}
mkdir -p "$OUTDIR"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
[ -n "$NSYS" ] || { echo "nsys not found"; exit 2; }
"$NSYS" profile -o "$OUTDIR/p" -f true -t cuda --cuda-graph-trace=node "$BIN" bench --preset "$PRESET" --batch "$BATCH" \
  --prompt 512 --new 128 | grep '^BENCH'
"$NSYS" stats -q --report cuda_gpu_trace --format csv -o "$OUTDIR/trace" "$OUTDIR/p.nsys-rep" > /dev/null
python3 - "$OUTDIR"/trace*.csv <<'PY'
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
if rows and "Start (ns)" not in rows[0]:
    print("PROFILE columns:", list(rows[0].keys())); sys.exit(1)
k = [r for r in rows if r.get("Name") and "memcpy" not in r["Name"].lower() and "memset" not in r["Name"].lower()]
k.sort(key=lambda r: int(r["Start (ns)"]))
# Decode steps end with the sampling kernel; look at the last 20 steps.
ends = [i for i, r in enumerate(k) if "sampleKernel" in r["Name"]]
lo, hi = ends[-21] + 1, ends[-1] + 1
win = k[lo:hi]
t0 = int(win[0]["Start (ns)"]); t1 = int(win[-1]["Start (ns)"]) + int(win[-1]["Duration (ns)"])
steps = 20
busy = collections.defaultdict(int); count = collections.Counter(); gap_before = collections.defaultdict(int)
prev_end = None
for r in win:
    name = r["Name"].split("(")[0].split("<")[0].strip()
    s, d = int(r["Start (ns)"]), int(r["Duration (ns)"])
    busy[name] += d; count[name] += 1
    if prev_end is not None: gap_before[name] += s - prev_end
    prev_end = max(prev_end or 0, s + d)
total = (t1 - t0) / steps / 1e3
print("PROFILE step %.1f us (wall per step over the last %d steps)" % (total, steps))
print("PROFILE %-40s %8s %10s %12s %12s" % ("kernel", "per step", "us/step", "us/launch", "gap us/step"))
for name in sorted(busy, key=lambda n: -busy[n]):
    print("PROFILE %-40s %8.1f %10.1f %12.2f %12.1f" % (name[:40], count[name] / steps, busy[name] / steps / 1e3,
          busy[name] / count[name] / 1e3, gap_before[name] / steps / 1e3))
PY
