#!/usr/bin/env python3
"""SLO attainment (and p99 latency) against request rate, one line per policy set, one panel per
scenario, from a `computron sweep` CSV whose grid has `rate_scale` (e.g. sweeps/rate-cv4.json).
Seeds are averaged. Writes PNG next to the CSV unless -o is given.

usage: plot_slo_vs_rate.py out/sweeps/rate-cv4.csv [-o slo_vs_rate.png]
"""
import argparse
import collections
import csv
import os

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: E402
except ImportError:  # e.g. a pyenv python without it; /usr/bin/python3 has matplotlib
    raise SystemExit("matplotlib is not installed for this python; run with /usr/bin/python3")


def averaged(rows, xkey):
    acc = collections.defaultdict(list)
    for r in rows:
        if r.get("error"):
            continue
        acc[(r["scenario"], r["policy"], float(r[xkey]))].append(r)
    def mean_attainment(v):
        # Empty when the run's scenario sets no SLO: nothing to plot for that point.
        vals = [float(x["slo_attainment"]) for x in v if x.get("slo_attainment") not in (None, "")]
        return sum(vals) / len(vals) if vals else float("nan")

    return {k: (mean_attainment(v), sum(float(x["p99_ms"]) for x in v) / len(v)) for k, v in acc.items()}


def plot(csv_path, xkey, xlabel, out, target=0.99):
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or xkey not in rows[0]:
        raise SystemExit(f"{csv_path}: no '{xkey}' column (sweep grid must include it)")
    data = averaged(rows, xkey)
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(2, len(scenarios), figsize=(5 * len(scenarios), 7), squeeze=False)
    for col, s in enumerate(scenarios):
        for p in policies:
            xs = sorted(x for (sc, pol, x) in data if sc == s and pol == p)
            axes[0][col].plot(xs, [100 * data[(s, p, x)][0] for x in xs], marker="o", label=p)
            axes[1][col].plot(xs, [data[(s, p, x)][1] for x in xs], marker="o", label=p)
        axes[0][col].axhline(100 * target, color="grey", linestyle=":")
        axes[0][col].set_title(os.path.basename(s).replace(".json", ""), fontsize=9)
        axes[0][col].set_ylabel("SLO attainment %")
        axes[1][col].set_ylabel("p99 latency ms")
        axes[1][col].set_xlabel(xlabel)
        if xkey == "workload.cv":
            for a in (axes[0][col], axes[1][col]):
                a.set_xscale("log")
    if not data:
        raise SystemExit(f"{csv_path}: every run failed (see the error column)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("-o", "--out")
    a = ap.parse_args()
    plot(a.csv, "rate_scale", "request rate (x the scenario's)",
         a.out or os.path.join(os.path.dirname(a.csv) or ".", "slo_vs_rate.png"))
