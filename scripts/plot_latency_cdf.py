#!/usr/bin/env python3
"""Plots latency CDFs from one or more requests.csv files (written by `computron sim` or `replay`).

usage: scripts/plot_latency_cdf.py RUN_DIR_OR_CSV [...] [--per-model] [--ttft] [-o latency_cdf.png]

Each argument is a requests.csv or a folder holding one; the legend uses the folder name.
Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import csv
import pathlib
import sys


def load(path):
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / "requests.csv"
    if not p.exists():
        sys.exit(f"{p}: no such file")
    rows = []
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        needed = {"model", "arrival_s", "first_token_s", "finish_s", "ok"}
        if not needed <= set(reader.fieldnames or []):
            sys.exit(f"{p}: not a computron requests.csv (needs columns {sorted(needed)})")
        for line, row in enumerate(reader, start=2):
            try:
                if row["ok"] != "1":
                    continue
                rows.append((row["model"], float(row["arrival_s"]), float(row["first_token_s"]),
                             float(row["finish_s"])))
            except ValueError as e:
                sys.exit(f"{p}:{line}: {e}")
    return p.parent.name or str(p), rows


def finish_plot(fig, ax, args):
    """Labels, scale, grid and legend of a latency CDF; saves it to args.output (shared with
    plot_compare_cdf.py)."""
    ax.set_xlabel("time to first token (ms)" if args.ttft else "latency (ms)")
    ax.set_ylabel("fraction of requests")
    if args.log:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=130)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--per-model", action="store_true", help="one curve per model instead of per run")
    ap.add_argument("--ttft", action="store_true", help="time to first token instead of latency")
    ap.add_argument("-o", "--output", default="latency_cdf.png")
    ap.add_argument("--log", action="store_true", help="logarithmic latency axis")
    args = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in args.runs:
        name, rows = load(run)
        groups = {}
        for model, arrival, first, finish in rows:
            key = f"{name}: {model}" if args.per_model else name
            groups.setdefault(key, []).append(((first if args.ttft else finish) - arrival) * 1e3)
        for key, values in sorted(groups.items()):
            values.sort()
            n = len(values)
            ax.step(values, [(i + 1) / n for i in range(n)], where="post", label=f"{key} (n={n})")
    finish_plot(fig, ax, args)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
