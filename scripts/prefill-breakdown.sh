#!/usr/bin/env bash
# Where prefill time goes, one call on a GPU machine: our prefill tokens/s at batch 1, 8 and 32
# (512-token prompts) beside transformers with its default attention (SDPA), then Nsight Compute's
# kernel durations of our batch-8 prefill grouped by kernel (clocks and caches left alone).
# Usage: BIN=build-prebuilt/computron_model_check OUT=dir scripts/prefill-breakdown.sh [PRESET...]
# NCU_ONLY=1: only the kernel durations (scripts/prefill-check.sh runs it so).
set -u
BIN=${BIN:-build-prebuilt/computron_model_check}
OUT=${OUT:-$PWD/prefill-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/prefill-breakdown.log") 2>&1
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
PRESETS=${*:-opt-6.7b llama-3-8b}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for p in $PRESETS; do
  if [ "${NCU_ONLY:-0}" != 1 ]; then
  echo "=== $(date +%T) ours: $p"
  timeout 120 $BIN bench --preset $p --batch 1,8,32 --prompt 512 --new 2 | grep -E "^BENCH|d2d" || echo "FAILED bench $p"
  arch=opt; case $p in llama*) arch=llama;; esac
  echo "=== $(date +%T) transformers sdpa: $p"
  timeout 240 python3 scripts/hf_reference.py bench --arch $arch --batch 1,8,32 --prompt 512 --new 2 --attn sdpa 2>&1 | grep HFBENCH || echo "FAILED hf $p"
  fi
  echo "=== $(date +%T) kernels of a batch-8 prefill: $p"
  COMPUTRON_DECODE_GRAPH=0 timeout 240 "$NCU" --metrics gpu__time_duration.sum --clock-control none --cache-control none \
    --launch-count ${NCU_LAUNCHES:-6000} --csv $BIN bench --preset $p --batch 8 --prompt 512 --new 2 2>/dev/null | grep -E '^"' > "$OUT/ncu-$p.csv"
  python3 - "$OUT/ncu-$p.csv" <<'PY'
import csv, sys, collections
t = collections.defaultdict(float); n = collections.Counter(); cols = None
for r in csv.reader(open(sys.argv[1])):
    if r and r[0] == "ID":
        cols = {c: i for i, c in enumerate(r)}; continue
    if cols is None or len(r) != len(cols) or r[cols["Metric Name"]] != "gpu__time_duration.sum":
        continue
    name = r[cols["Kernel Name"]].split("(")[0][:70]
    unit, v = r[cols["Metric Unit"]], float(r[cols["Metric Value"]].replace(",", ""))
    us = {"ns": v / 1e3, "nsecond": v / 1e3, "us": v, "usecond": v, "ms": v * 1e3, "msecond": v * 1e3}.get(unit, v)
    t[name] += us; n[name] += 1
total = sum(t.values())
print("KERNELS total %.1f ms over %d launches" % (total / 1e3, sum(n.values())))
for name, us in sorted(t.items(), key=lambda kv: -kv[1])[:18]:
    print("KERNEL %6.2f%% %9.1f us %6d x  %s" % (100 * us / total, us, n[name], name))
PY
done
