#!/usr/bin/env python3
"""Simulator fidelity against GPU replays (docs/specs.md, "Profiles").

usage: scripts/fidelity_report.py REPLAY_ROOT --computron BIN [--scenarios DIR] [--profile PROFILE.json] [--out DIR]
                                   [--set PATH=VALUE]... [--model-set KEY=VALUE]...

REPLAY_ROOT holds one output folder per `computron replay` run (summary.json, requests.csv). For
each, the simulator runs the same scenario (DIR/<scenario name>.json, default scenarios/fidelity)
twice: with the roofline, and with PROFILE as cluster.profile. Prints a markdown table per case: mean, p50, p99 latency and swaps on
the GPUs and the relative errors of each simulation, the KS distance between the latency
distributions, then the improvement of `best` over `computron` (mean and p99) on the GPUs and in
each simulation. Targets (issue 13): mean and p50 within 5%, p99 within 10%, swaps within one,
and the best/computron ratio within 10% of the GPU's.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile


def latencies(folder):
    with open(os.path.join(folder, "requests.csv")) as f:
        return sorted(float(r["latency_s"]) for r in csv.DictReader(f) if r["ok"] == "1")


def ks(a, b):
    if not a or not b:
        return float("nan")
    i = j = 0
    d = 0.0
    while i < len(a) and j < len(b):
        x = min(a[i], b[j])
        while i < len(a) and a[i] <= x:
            i += 1
        while j < len(b) and b[j] <= x:
            j += 1
        d = max(d, abs(i / len(a) - j / len(b)))
    return d


def stats(folder):
    with open(os.path.join(folder, "summary.json")) as f:
        s = json.load(f)
    o = s["overall"]
    return {"mean": o["latency_ms"]["mean"], "p50": o["latency_ms"]["p50"], "p99": o["latency_ms"]["p99"],
            "swaps": o["swaps"], "served": o["served"], "lat": latencies(folder)}, s


def simulate(binary, scenario, profile, workdir, tag, sets=(), model_sets=()):
    out = os.path.join(workdir, tag)
    cmd = [binary, "sim", scenario, "-o", out, "-q"]
    for s in sets:
        cmd += ["--set", s]
    if model_sets:
        with open(scenario) as f:
            count = len(json.load(f)["models"])
        for i in range(count):
            for s in model_sets:
                cmd += ["--set", f"models[{i}].{s}"]
    if profile:
        cmd += ["--set", "cluster.profile=" + os.path.abspath(profile)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return stats(out)[0]


def err(a, b):
    return (b - a) / a * 100 if a else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--computron", required=True)
    ap.add_argument("--profile")
    ap.add_argument("--scenarios", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scenarios", "fidelity"))
    ap.add_argument("--out", help="keep the simulations' folders here")
    ap.add_argument("--set", action="append", default=[], help="one more --set for every simulation (repeatable)")
    ap.add_argument("--model-set", action="append", default=[],
                    help="KEY=VALUE set on every model of each scenario, e.g. tp=1 and 'gpus=[0]' for replays made at "
                         "TP 1 on one GPU (scripts/fidelity-1gpu-check.sh; repeatable)")
    args = ap.parse_args()
    workdir = args.out or tempfile.mkdtemp(prefix="fidelity-")
    os.makedirs(workdir, exist_ok=True)
    rows = {}
    for name in sorted(os.listdir(args.root)):
        folder = os.path.join(args.root, name)
        if not os.path.exists(os.path.join(folder, "summary.json")):
            continue
        gpu, summary = stats(folder)
        scenario = os.path.join(args.scenarios, summary["config"]["name"] + ".json")
        res = {"gpu": gpu, "roofline": simulate(args.computron, scenario, None, workdir, name + "-roofline", args.set, args.model_set)}
        if args.profile:
            res["profile"] = simulate(args.computron, scenario, args.profile, workdir, name + "-profile", args.set, args.model_set)
        rows[name] = res
    sources = ["roofline"] + (["profile"] if args.profile else [])
    print("| case | GPU mean / p50 / p99 ms, swaps | " + " | ".join(
        f"{s}: mean, p50, p99 error, swaps diff, KS" for s in sources) + " | within targets |")
    print("| --- | --- | " + " | ".join("---" for _ in sources) + " | --- |")
    for name, r in rows.items():
        g = r["gpu"]
        cells = []
        ok = None
        for s in sources:
            m = r[s]
            e = (err(g["mean"], m["mean"]), err(g["p50"], m["p50"]), err(g["p99"], m["p99"]))
            dswap = m["swaps"] - g["swaps"]
            cells.append(f"{e[0]:+.1f}%, {e[1]:+.1f}%, {e[2]:+.1f}%, {dswap:+d}, {ks(g['lat'], m['lat']):.2f}")
            if s == sources[-1]:
                ok = abs(e[0]) <= 5 and abs(e[1]) <= 5 and abs(e[2]) <= 10 and abs(dswap) <= 1
        print(f"| {name} | {g['mean']:.1f} / {g['p50']:.1f} / {g['p99']:.1f}, {g['swaps']} | " + " | ".join(cells) +
              f" | {'yes' if ok else 'no'} |")
    # best over computron, per case without the policy suffix
    print()
    print("| case | GPU computron/best mean, p99 | " + " | ".join(f"{s} ratios (error vs GPU)" for s in sources) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in sources) + " |")
    for name in rows:
        if not name.endswith("-computron"):
            continue
        base = name[: -len("-computron")]
        if base + "-best" not in rows:
            continue
        c, b = rows[name], rows[base + "-best"]
        def ratio(src, key):
            return c[src][key] / b[src][key] if b[src][key] else float("nan")
        gm, gp = ratio("gpu", "mean"), ratio("gpu", "p99")
        cells = []
        for s in sources:
            sm, sp = ratio(s, "mean"), ratio(s, "p99")
            cells.append(f"{sm:.2f}x ({err(gm, sm):+.0f}%), {sp:.2f}x ({err(gp, sp):+.0f}%)")
        print(f"| {base} | {gm:.2f}x, {gp:.2f}x | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
