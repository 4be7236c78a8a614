#!/usr/bin/env python3
"""SLO attainment (and p99 latency) against the arrival coefficient of variation, one line per
policy set, from a `computron sweep` CSV whose grid has `workload.cv` (e.g. sweeps/cv.json).
Seeds are averaged. Writes PNG next to the CSV unless -o is given.

usage: plot_slo_vs_cv.py out/sweeps/cv.csv [-o slo_vs_cv.png]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_slo_vs_rate import plot  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("-o", "--out")
    a = ap.parse_args()
    plot(a.csv, "workload.cv", "coefficient of variation of arrivals",
         a.out or os.path.join(os.path.dirname(a.csv) or ".", "slo_vs_cv.png"))
