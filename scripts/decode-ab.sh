#!/usr/bin/env bash
# Decode speed of several builds or settings of computron_model_check, in one call on a GPU
# machine: the kernel checks of each side (accuracy against references, product and attention
# timings), then the speed table (`bench`, prompt 512, 128 new tokens, batch 1/8/32) per preset,
# the sides alternating ROUNDS times so that drift of the card shows up in all of them.
# Usage: SIDES="name=dir[:VAR=VALUE,VAR=VALUE] ..." [ROUNDS=2] [PRESETS="opt-6.7b llama-3-8b"]
#        [KERNELS=all|first|none] scripts/decode-ab.sh          (log under $OUT or ./decode-ab-out)
# e.g.   SIDES="old=.device-bin/old new=.device-bin/new merge0=.device-bin/new:COMPUTRON_ATTN_MERGE=0"
set -u
SIDES=${SIDES:?set SIDES, e.g. SIDES=\"a=dir1 b=dir2:COMPUTRON_PDL=0\"}
ROUNDS=${ROUNDS:-2}
PRESETS=${PRESETS:-"opt-6.7b llama-3-8b"}
KERNELS=${KERNELS:-all}
OUT=${OUT:-$PWD/decode-ab-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}
export NCCL_NVLS_ENABLE=0
exec > >(tee -a "$OUT/decode-ab.log") 2>&1
echo "=== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)"
# side NAME=DIR[:ENV] -> runs "$@" in DIR's binary with ENV exported
with_side() {
  local spec=$1; shift
  local dir=${spec#*=}; local envs=""
  case $dir in *:*) envs=${dir#*:}; dir=${dir%%:*};; esac
  ( IFS=,; for kv in $envs; do export "$kv"; done; "$dir/computron_model_check" "$@" )
}
first=1
for spec in $SIDES; do
  if [ "$KERNELS" = all ] || { [ "$KERNELS" = first ] && [ $first = 1 ]; }; then
    echo "=== kernels ${spec}"
    timeout 150 bash -c "$(declare -f with_side); with_side '$spec' kernels" \
      | grep -E "KCHECK .*(attention|overall|FAIL)|KATTN|KGEMM .*rows  1 " || echo "FAILED kernels $spec"
  fi
  first=0
done
for round in $(seq 1 "$ROUNDS"); do
  for spec in $SIDES; do
    name=${spec%%=*}
    for p in $PRESETS; do
      echo "=== round $round $spec $p"
      timeout 90 bash -c "$(declare -f with_side); with_side '$spec' bench --preset $p --batch 1,8,32 --prompt 512 --new 128" \
        | grep -E "^BENCH" | sed "s/^/SIDE $name r$round /" || echo "FAILED bench $spec $p"
    done
  done
done
echo "=== summary (decode step / bound, one column per round)"
grep -E "^SIDE " "$OUT/decode-ab.log" | python3 -c '
import sys, json, collections
rows = collections.defaultdict(list)
order = []
for line in sys.stdin:
    _, side, rnd, _, rest = line.split(" ", 4)
    try:
        d = json.loads(rest)
    except ValueError:
        continue
    if side not in order:
        order.append(side)
    rows[(d.get("preset"), d.get("batch"), side)].append(d.get("decode_vs_bound"))
for (preset, batch, side), v in sorted(rows.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] or 0, order.index(kv[0][2]))):
    print(f"{preset:12} b{batch:<3} {side:10} " + " ".join(f"{x:.3f}" for x in v if x is not None))
'
