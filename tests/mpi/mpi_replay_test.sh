#!/usr/bin/env bash
# `mpirun -np 3 computron replay` on the host-memory device (oversubscribed on small machines).
#   same-decisions: the scenario gives the same engine commands, in the same order, and the same
#                   served counts as one process.
#   kill-rank:      rank 2 is killed (SIGKILL) mid-run; every request still ends exactly once
#                   (served, or failed with a reason naming the lost rank), the models on the other
#                   ranks are all served, and replay says which rank was lost. (Its exit code, 1,
#                   does not reach the shell: under --enable-recovery Open MPI's mpirun exits 0.)
# Usage: mpi_replay_test.sh MODE COMPUTRON MPIEXEC SCENARIO
set -euo pipefail
mode=$1 computron=$2 mpiexec=$3 scenario=$4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Containers run as root; Open MPI refuses that unless told. Sanitizer builds: Open MPI's own
# allocations at exit are not this program's leaks.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader,tcp
export ASAN_OPTIONS="${ASAN_OPTIONS:-}${ASAN_OPTIONS:+:}detect_leaks=0"
mpirun=("$mpiexec" -np 3 --oversubscribe --enable-recovery)

served() { python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(s['overall']['requests'], s['overall']['served'], s['overall']['failed'])" "$1"; }

case "$mode" in
  same-decisions)
    "$computron" replay "$scenario" --device host --quiet --out "$work/one" --command-log "$work/one.log" >/dev/null
    "${mpirun[@]}" "$computron" replay "$scenario" --device host --quiet --out "$work/three" \
      --command-log "$work/three.log" >/dev/null
    if ! diff "$work/one.log" "$work/three.log"; then
      echo "FAIL: three ranks made other decisions than one process (diff above)"; exit 1
    fi
    one=$(served "$work/one/summary.json"); three=$(served "$work/three/summary.json")
    [ "$one" = "$three" ] || { echo "FAIL: served counts differ: one process '$one', three ranks '$three'"; exit 1; }
    grep -q '^evict' "$work/one.log" || { echo "FAIL: the scenario made no swaps"; exit 1; }
    python3 - "$work/three/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
ranks = s["runtime"]["ranks"]
assert [r["rank"] for r in ranks] == [0, 1, 2], ranks
assert not any(r["lost"] for r in ranks), ranks
assert ranks[1]["jobs"] > 0 and ranks[2]["jobs"] > 0, ranks
PY
    echo "ok: $(wc -l < "$work/one.log") commands identical, requests/served/failed $one"
    ;;
  kill-rank)
    set +e
    "${mpirun[@]}" "$computron" replay "$scenario" --device host --out "$work/k" --rank-timeout-s 1 \
      >"$work/out.txt" 2>"$work/err.txt" &
    runner=$!
    # Rank 2 is the process whose environment says so; kill it once the run is under way.
    victim=""
    for _ in $(seq 1 200); do
      for p in $(pgrep -f "computron replay $scenario" || true); do
        if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=2"; then victim=$p; fi
      done
      [ -n "$victim" ] && break
      sleep 0.05
    done
    [ -n "$victim" ] || { echo "FAIL: no rank 2 process found"; kill $runner; exit 1; }
    sleep 3
    kill -9 "$victim"
    wait $runner
    rc=$?
    set -e
    [ "$rc" -le 1 ] || { echo "FAIL: exit code $rc"; cat "$work/err.txt"; exit 1; }
    grep -q "rank 2 lost" "$work/err.txt" || { echo "FAIL: no word of rank 2's loss"; cat "$work/err.txt"; exit 1; }
    python3 - "$work/k" <<'PY'
import csv, json, sys
out = sys.argv[1]
s = json.load(open(out + "/summary.json"))
rows = list(csv.DictReader(open(out + "/requests.csv")))
ids = [r["id"] for r in rows]
assert len(ids) == len(set(ids)), "a request ended twice"
assert s["overall"]["requests"] == s["runtime"]["arrivals"] == len(rows), (s["overall"], len(rows))
ranks = s["runtime"]["ranks"]
assert ranks[2]["lost"] and "rank 2 lost" in ranks[2]["reason"], ranks[2]
assert not ranks[0]["lost"] and not ranks[1]["lost"], ranks
# Models h, i, j live on rank 2's GPUs (4, 5); every other model is served in full.
failed_elsewhere = [r for r in rows if r["model"] not in ("h", "i", "j") and r["ok"] != "1"]
assert not failed_elsewhere, failed_elsewhere[:3]
failed = [r for r in rows if r["ok"] != "1"]
assert failed, "nothing needed the lost rank"
for r in failed:
    assert "lost" in r["error"], r
print(f"ok: {len(rows)} requests, {len(rows) - len(failed)} served, {len(failed)} failed naming the lost rank")
PY
    ;;
  *)
    echo "unknown mode $mode"; exit 2 ;;
esac
