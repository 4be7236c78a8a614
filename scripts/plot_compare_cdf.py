#!/usr/bin/env python3
"""Overlays the latency CDFs of two runs, A (the reference) and B (the candidate), as
`computron compare A B` compares them: served requests of requests.csv, with the
Kolmogorov-Smirnov distance (the largest vertical gap) marked.

usage: scripts/plot_compare_cdf.py A B [-o compare_cdf.png] [--model NAME] [--ttft] [--log]

A and B are run folders (or their requests.csv). Without --model, all requests of the models both
runs have; with it, that model's alone. Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import bisect
import sys

from plot_latency_cdf import finish_plot, load


def ks(a, b):
    """sup |F_a - F_b| over sorted samples, and where it is reached."""
    best, at = 0.0, None
    for x in sorted(set(a) | set(b)):
        gap = abs(bisect.bisect_right(a, x) / len(a) - bisect.bisect_right(b, x) / len(b))
        if gap > best:
            best, at = gap, x
    return best, at


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="reference run folder (or its requests.csv)")
    ap.add_argument("b", help="candidate run folder (or its requests.csv)")
    ap.add_argument("-o", "--output", default="compare_cdf.png")
    ap.add_argument("--model", help="one model's requests only")
    ap.add_argument("--ttft", action="store_true", help="time to first token instead of latency")
    ap.add_argument("--log", action="store_true", help="logarithmic latency axis")
    args = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_compare_cdf.py: matplotlib is missing (Debian: apt-get install python3-matplotlib; "
                 "or pip install matplotlib)")

    runs = [load(args.a), load(args.b)]
    models = [{row[0] for row in rows} for _, rows in runs]
    if args.model:
        for (name, _), have, path in zip(runs, models, (args.a, args.b)):
            if args.model not in have:
                sys.exit(f"{path}: no served request of model '{args.model}' (it has {', '.join(sorted(have)) or 'none'})")
        keep = {args.model}
    else:
        keep = models[0] & models[1]
        for only, path in ((models[0] - keep, args.a), (models[1] - keep, args.b)):
            if only:
                print(f"warning: {path}: models {', '.join(sorted(only))} are not in the other run; left out",
                      file=sys.stderr)
        if not keep:
            sys.exit("the runs have no model in common")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    samples = []
    for (name, rows), role in zip(runs, ("A", "B")):
        values = sorted(((first if args.ttft else finish) - arrival) * 1e3
                        for model, arrival, first, finish in rows if model in keep)
        if not values:
            sys.exit(f"{name}: no served request to plot")
        samples.append(values)
        n = len(values)
        ax.step(values, [(i + 1) / n for i in range(n)], where="post", label=f"{role}: {name} (n={n})")
    distance, at = ks(*samples)
    if at is not None:
        fa = bisect.bisect_right(samples[0], at) / len(samples[0])
        fb = bisect.bisect_right(samples[1], at) / len(samples[1])
        ax.vlines(at, min(fa, fb), max(fa, fb), colors="black", linestyles="dotted", label=f"KS {distance:.4f}")
    ax.set_title(f"model {args.model}" if args.model else "all compared models", fontsize=10)
    finish_plot(fig, ax, args)
    print(f"wrote {args.output} (KS {distance:.4f})")


if __name__ == "__main__":
    main()
