#!/usr/bin/env python3
"""Summarises a replay run with COMPUTRON_LOAD_TRACE=1 (docs/runtime.md, "Loads while the GPU computes").

Usage: scripts/load_trace_report.py RUN_LOG [TIMELINE_JSON]

RUN_LOG is the replay's stderr (LOADTRACE and GRAPHTRACE lines); TIMELINE_JSON its timeline.json,
for each load's duration (matched to the traced loads in issue order: one GPU's direct loads).
Prints one line per load (duration, the longest window issue, the longest
wait for a continuation's callback) and the decode graphs' capture times, up to 16 sequences and
above (the sizes whose products skip cuBLAS, and the rest).
"""
import collections
import json
import statistics
import sys


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stdout if len(argv) >= 2 else sys.stderr)
        return 0 if len(argv) >= 2 else 2
    windows = collections.OrderedDict()
    graphs = []
    try:
        with open(argv[1]) as log:
            for line_no, line in enumerate(log, 1):
                for tag, sink in (("LOADTRACE ", None), ("GRAPHTRACE ", graphs)):
                    if not line.startswith(tag):
                        continue
                    try:
                        record = json.loads(line[len(tag):])
                    except json.JSONDecodeError as e:
                        print(f"{argv[1]}:{line_no}: bad {tag.strip()} line: {e}", file=sys.stderr)
                        return 2
                    if sink is None:
                        windows.setdefault(record["op"], []).append(record)
                    else:
                        sink.append(record)
    except OSError as e:
        print(f"cannot read {argv[1]}: {e}", file=sys.stderr)
        return 2
    loads = []
    if len(argv) > 2:
        try:
            with open(argv[2]) as f:
                events = json.load(f)["traceEvents"]
        except (OSError, ValueError, KeyError) as e:
            print(f"cannot read the timeline {argv[2]}: {e}", file=sys.stderr)
            return 2
        loads = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") == "load"), key=lambda e: e["ts"])
    print(f"{len(windows)} traced direct loads, {sum(len(w) for w in windows.values())} windows")
    for i, (op, ws) in enumerate(windows.items()):
        issue = max(w["issue_ms"] for w in ws)
        callback = max(w["callback_after_prev_issue_ms"] for w in ws)
        duration = f"{loads[i]['dur'] / 1e3:8.1f} ms" if i < len(loads) else "       -   "
        print(f"load op {op:>4}: {duration}  windows {len(ws):3d}  longest issue {issue:7.2f} ms  "
              f"longest callback wait {callback:7.2f} ms")
    if loads:
        d = [e["dur"] / 1e3 for e in loads]
        print(f"loads: mean {statistics.mean(d):.1f} ms, median {statistics.median(d):.1f} ms, max {max(d):.1f} ms")
    if graphs:
        for label, sel in (("1-16 sequences", lambda g: g["sequences"] <= 16), ("17+ sequences", lambda g: g["sequences"] > 16)):
            c = [g["capture_ms"] for g in graphs if sel(g)]
            if c:
                print(f"decode graphs, {label}: {len(c)} captured, mean {statistics.mean(c):.2f} ms, "
                      f"median {statistics.median(c):.2f} ms, max {max(c):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
