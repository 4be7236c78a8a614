#!/usr/bin/env python3
"""Cold-start report from `computron replay` output folders (scripts/coldstart-check.sh).

For every request that waited for its model's load, pairs it with that load from timeline.json:
the copy time (load issued -> last byte on the GPU, the slowest shard), the reported load time
(after the device checksum) and the request's latency (arrival -> last token). Prints a markdown
table of medians per run and, with --plot, draws one request of each named run as a timeline
(load copy, layers arriving, the batch, its first token).

Usage: scripts/coldstart_report.py RUNS_DIR [--runs a,b,...] [--warm NAME=RUN ...] [--plot out.png]
"""
import argparse
import csv
import json
import os
import statistics
import sys


def load_run(folder):
    with open(os.path.join(folder, "timeline.json")) as f:
        events = json.load(f)["traceEvents"]
    with open(os.path.join(folder, "requests.csv")) as f:
        requests = list(csv.DictReader(f))
    loads = [e for e in events if e.get("cat") == "load" and e.get("ph") == "X"]
    paths = [e for e in events if " via " in str(e.get("cat", "")) and e.get("ph") == "X"]
    layers = [e for e in events if str(e.get("cat", "")).endswith("layers ready")]
    batches = [e for e in events if e.get("cat") == "batch"]
    return requests, loads, paths, layers, batches


def cold_rows(folder):
    requests, loads, paths, layers, batches = load_run(folder)
    rows = []
    for r in requests:
        if r["waited_for_load"] != "1" or r["ok"] != "1":
            continue
        arrival = float(r["arrival_s"]) * 1e6
        finish = float(r["finish_s"]) * 1e6
        mine = [l for l in loads if l["name"] == "load " + r["model"] and arrival - 1 <= l["ts"] <= finish]
        if not mine:
            continue
        start = min(l["ts"] for l in mine)
        reported = max(l["ts"] + l["dur"] for l in mine)
        copies = [p for p in paths if start - 1 <= p["ts"] <= reported]
        copy_end = max(p["ts"] + p["dur"] for p in copies) if copies else reported
        rows.append({
            "id": int(r["id"]),
            "model": r["model"],
            "copy_ms": (copy_end - start) / 1e3,
            "reported_ms": (reported - start) / 1e3,
            "latency_ms": (finish - arrival) / 1e3,
            "first_token_ms": (float(r["first_token_s"]) * 1e6 - arrival) / 1e3,
            "after_copy_ms": (float(r["first_token_s"]) * 1e6 - copy_end) / 1e3,
            "load_start": start, "copy_end": copy_end, "arrival": arrival,
            "batch": [b for b in batches if arrival - 1 <= b["ts"] <= finish],
            "layers": [l for l in layers if start - 1 <= l["ts"] <= reported],
            "first_token": float(r["first_token_s"]) * 1e6, "finish": finish,
        })
    return rows


def warm_latency(folder):
    """Median latency of the requests that found their model resident."""
    with open(os.path.join(folder, "requests.csv")) as f:
        lat = [float(r["latency_s"]) * 1e3 for r in csv.DictReader(f) if r["waited_for_load"] == "0" and r["ok"] == "1"]
    return statistics.median(lat) if lat else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs_dir")
    ap.add_argument("--runs", default="", help="comma-separated run folders (default: every folder)")
    ap.add_argument("--warm", action="append", default=[], help="RUN=WARM_RUN: compare RUN against WARM_RUN's warm latency")
    ap.add_argument("--plot", help="write a timeline figure (PNG) of the runs named by --plot-runs")
    ap.add_argument("--plot-runs", default="pipelined,serial")
    ap.add_argument("--skip-first", type=int, default=1, help="cold requests left out of the medians (first use of kernels)")
    a = ap.parse_args()
    names = [n for n in a.runs.split(",") if n] or sorted(os.listdir(a.runs_dir))
    warm = dict(w.split("=", 1) for w in a.warm)
    print("| run | cold requests | copy ms | load reported ms | latency ms | latency / copy | first token after last byte, ms | warm latency ms | latency / (copy + warm) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        folder = os.path.join(a.runs_dir, name)
        if not os.path.isfile(os.path.join(folder, "timeline.json")):
            continue
        rows = cold_rows(folder)[a.skip_first:]
        if not rows:
            continue
        med = lambda k: statistics.median(r[k] for r in rows)
        ratio = statistics.median(r["latency_ms"] / r["copy_ms"] for r in rows)
        w = warm_latency(os.path.join(a.runs_dir, warm[name])) if name in warm else float("nan")
        vs_warm = statistics.median(r["latency_ms"] / (r["copy_ms"] + w) for r in rows) if name in warm else float("nan")
        fmt = lambda v: "" if v != v else f"{v:.1f}"
        fmt2 = lambda v: "" if v != v else f"{v:.3f}"
        print(f"| {name} | {len(rows)} | {med('copy_ms'):.1f} | {med('reported_ms'):.1f} | {med('latency_ms'):.1f} | "
              f"{ratio:.3f} | {med('after_copy_ms'):.1f} | {fmt(w)} | {fmt2(vs_warm)} |")
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        plot_runs = [n for n in a.plot_runs.split(",") if n]
        fig, axes = plt.subplots(len(plot_runs), 1, figsize=(9, 1.9 * len(plot_runs)), sharex=True)
        axes = axes if len(plot_runs) > 1 else [axes]
        for ax, name in zip(axes, plot_runs):
            rows = cold_rows(os.path.join(a.runs_dir, name))
            r = rows[min(len(rows) - 1, a.skip_first + 2)]
            t0 = r["arrival"]
            ms = lambda t: (t - t0) / 1e3
            ax.barh(2, ms(r["copy_end"]) - ms(r["load_start"]), left=ms(r["load_start"]), color="#4c72b0", label="load: host -> GPU copy")
            for l in r["layers"]:
                ax.barh(1, ms(l["ts"] + l["dur"]) - ms(l["ts"]), left=ms(l["ts"]), color="#55a868", label="layers arriving (first..last)")
            for b in r["batch"]:
                ax.barh(0, ms(b["ts"] + b["dur"]) - ms(b["ts"]), left=ms(b["ts"]), color="#c44e52", label="batch on the GPU")
            ax.axvline(ms(r["first_token"]), color="k", lw=1, ls="--", label="first token")
            ax.set_yticks([0, 1, 2], ["batch", "layers", "load"])
            ax.set_title(f"{name}: request {r['id']} ({r['model']}), latency {r['latency_ms']:.1f} ms, copy {r['copy_ms']:.1f} ms", fontsize=9)
        axes[-1].set_xlabel("ms after the request arrived")
        handles, labels = axes[0].get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=4, fontsize=8)
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.savefig(a.plot, dpi=110)
        print(f"wrote {a.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
