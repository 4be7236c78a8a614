#!/usr/bin/env python3
"""Batch by batch: a GPU replay against a simulation of the same scenario (issue 13's fidelity work).

usage: scripts/fidelity_batches.py GPU_RUN SIM_RUN [--top N] [--all]

GPU_RUN and SIM_RUN are output folders of `computron replay` and `computron sim` (requests.csv;
timeline.json where present). Requests are grouped into batches by (model, start time) on the GPU;
each batch is matched to the simulator's batch of its first request. Per batch it prints the start
time, size, the time from start to first token and from start to finish on the GPU and in the
simulator, and notes:
  first      the model's first batch of the run (first-use costs: kernels, cuBLAS plans)
  in-load    it started while a load of another model copied onto the GPU (GPU timeline)
  start+X    the simulator started it X ms earlier or later than the GPU
  other      the simulator grouped its requests differently (a different decision)
Batches are listed by the largest gap in time to first token, then a summary by batch size of
the median gap of all others. This is how the load stall, the sparse product warm-up and the
shared-link loads of bench/results/fidelity-1gpu-2026-12-01.md were found.
"""
import argparse
import collections
import csv
import json
import os
import statistics
import sys


def requests(folder):
    with open(os.path.join(folder, "requests.csv")) as f:
        return {r["id"]: r for r in csv.DictReader(f) if r["ok"] == "1"}


def load_spans(folder):
    """(start_s, end_s, model name) of each load on the GPU timeline, if there is one."""
    path = os.path.join(folder, "timeline.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        events = json.load(f).get("traceEvents", [])
    return [(e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6, e.get("name", "")[len("load "):])
            for e in events if e.get("ph") == "X" and e.get("cat") == "load"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gpu")
    ap.add_argument("sim")
    ap.add_argument("--top", type=int, default=15, help="batches listed (largest gaps first)")
    ap.add_argument("--all", action="store_true", help="list every batch in start order instead")
    args = ap.parse_args()
    g, s = requests(args.gpu), requests(args.sim)
    missing = [i for i in g if i not in s]
    if missing:
        print(f"{len(missing)} requests served on the GPU are not in the simulation (ids {missing[:5]}...): "
              "not the same scenario?", file=sys.stderr)
        return 2
    loads = load_spans(args.gpu)
    batches = collections.defaultdict(list)
    for r in g.values():
        batches[(r["model"], r["start_s"])].append(r)
    seen_models = set()
    rows = []
    for (model, start), rs in sorted(batches.items(), key=lambda kv: float(kv[0][1])):
        start = float(start)
        first = model not in seen_models
        seen_models.add(model)
        g_ttft = (float(rs[0]["first_token_s"]) - start) * 1e3
        g_dur = max(float(r["finish_s"]) for r in rs) * 1e3 - start * 1e3
        sr = [s[r["id"]] for r in rs]
        s_start = float(sr[0]["start_s"])
        s_ttft = (float(sr[0]["first_token_s"]) - s_start) * 1e3
        s_dur = max(float(r["finish_s"]) for r in sr) * 1e3 - s_start * 1e3
        notes = []
        if first:
            notes.append("first")
        if any(a <= start < b and name != model for a, b, name in loads):
            notes.append("in-load")
        if abs(s_start - start) > 0.001:
            notes.append(f"start{(s_start - start) * 1e3:+.0f}")
        if len({r["start_s"] for r in sr}) > 1:
            notes.append("other")
        rows.append({"start": start, "model": model, "n": len(rs), "g_ttft": g_ttft, "s_ttft": s_ttft,
                     "g_dur": g_dur, "s_dur": s_dur, "notes": " ".join(notes)})
    listed = rows if args.all else sorted(rows, key=lambda r: -abs(r["g_ttft"] - r["s_ttft"]))[: args.top]
    print(f"{len(rows)} batches on the GPU; {'all' if args.all else f'the {len(listed)} with the largest first-token gaps'}:")
    print(f"{'start s':>8} {'model':<16} {'n':>3} {'GPU ttft':>9} {'sim ttft':>9} {'gap':>8} "
          f"{'GPU dur':>9} {'sim dur':>9}  notes")
    for r in listed:
        print(f"{r['start']:8.3f} {r['model']:<16} {r['n']:3d} {r['g_ttft']:9.1f} {r['s_ttft']:9.1f} "
              f"{r['g_ttft'] - r['s_ttft']:+8.1f} {r['g_dur']:9.1f} {r['s_dur']:9.1f}  {r['notes']}")
    rest = [r for r in rows if not r["notes"]]
    by_n = collections.defaultdict(list)
    for r in rest:
        by_n[r["n"]].append(r["g_ttft"] - r["s_ttft"])
    print("\nbatches without notes, median first-token gap (GPU - sim) by size:")
    for n in sorted(by_n):
        print(f"  n={n:<3d} {len(by_n[n]):4d} batches  {statistics.median(by_n[n]):+7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
