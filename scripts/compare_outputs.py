#!/usr/bin/env python3
"""Compares the outputs of two computron builds on every shipped scenario (and the embedded default).

usage: scripts/compare_outputs.py BEFORE_BINARY AFTER_BINARY [--scenarios GLOB] [--ignore FIELD]...

Each scenario runs through `sim` with both binaries into temporary folders, then:
  requests.csv   must be byte-identical;
  summary.json   must be byte-identical, except for the fields given with --ignore (a dotted path
                 where `*` matches any key or list index, e.g. `models.*.expected_load`), which are
                 listed when they differ;
  timeline.json  must hold the same spans: every event is reduced to (name, category, start, duration,
                 args), with complete events and async begin/end pairs treated alike, and track
                 assignment (pid, tid) and metadata events ignored; byte equality is reported too.
A scenario the older build refuses (one using a newer preset, say) is run by the newer build alone
and listed as `new`. Prints one line per scenario and exits 1 if any scenario differs beyond the
ignored fields.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(binary, scenario, out):
    args = [binary, "sim"] + ([scenario] if scenario else []) + ["--out", out]
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    if not os.path.exists(os.path.join(out, "summary.json")):
        raise RuntimeError(f"{' '.join(args)}: no summary.json in {out}")
    return out


def read(path):
    with open(path, "rb") as f:
        return f.read()


def strip_fields(node, path, ignored, found, prefix=""):
    """Removes the fields matching the dotted pattern `path` from node, recording their values."""
    if not path:
        return
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        keys = list(node.keys()) if head == "*" else ([head] if head in node else [])
        for k in keys:
            where = f"{prefix}.{k}" if prefix else k
            if rest:
                strip_fields(node[k], rest, ignored, found, where)
            else:
                found[where] = node.pop(k)
    elif isinstance(node, list):
        idx = range(len(node)) if head == "*" else ([int(head)] if head.isdigit() and int(head) < len(node) else [])
        for i in idx:
            where = f"{prefix}.{i}"
            if rest:
                strip_fields(node[i], rest, ignored, found, where)
            else:
                found[where] = node[i]
                node[i] = None


def spans(timeline):
    events = timeline["traceEvents"] if isinstance(timeline, dict) else timeline
    out = []
    open_async = {}
    for e in events:
        ph = e.get("ph")
        key = (e.get("name"), e.get("cat"), json.dumps(e.get("args", {}), sort_keys=True))
        if ph == "X":
            out.append(key + (e.get("ts"), e.get("dur")))
        elif ph == "b":
            open_async.setdefault((e.get("cat"), e.get("id"), e.get("name")), []).append(e)
        elif ph == "e":
            begins = open_async.get((e.get("cat"), e.get("id"), e.get("name")))
            if not begins:
                raise RuntimeError(f"async end without begin: {e}")
            b = begins.pop(0)
            bkey = (b.get("name"), b.get("cat"), json.dumps(b.get("args", {}), sort_keys=True))
            out.append(bkey + (b.get("ts"), round(e.get("ts") - b.get("ts"), 3)))
        elif ph in ("i", "I", "n"):
            out.append(key + (e.get("ts"), None))
    left = sum(len(v) for v in open_async.values())
    if left:
        raise RuntimeError(f"{left} async begin(s) without an end")
    # Durations are printed with limited precision; compare them rounded to the nanosecond.
    return sorted((n, c, a, round(t, 3), None if d is None else round(d, 3)) for n, c, a, t, d in out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--scenarios", default=os.path.join(ROOT, "scenarios", "*.json"))
    ap.add_argument("--ignore", action="append", default=[], help="summary.json field allowed to differ (dotted, * wildcard)")
    args = ap.parse_args()

    scenarios = [None] + sorted(glob.glob(args.scenarios))
    failures = 0
    new_only = 0
    for scenario in scenarios:
        label = os.path.basename(scenario) if scenario else "(embedded default)"
        with tempfile.TemporaryDirectory() as tmp:
            try:
                a = run(args.before, scenario, os.path.join(tmp, "a") + "/")
            except RuntimeError as e:
                # A scenario that uses what the older build lacks (a new preset, say): nothing to
                # compare, so it is listed, not counted; the newer build must still run it.
                run(args.after, scenario, os.path.join(tmp, "b") + "/")
                new_only += 1
                print(f"new   {label}: only the newer build runs it ({str(e)[-160:]})")
                continue
            b = run(args.after, scenario, os.path.join(tmp, "b") + "/")
            notes = []
            ok = True
            if read(os.path.join(a, "requests.csv")) != read(os.path.join(b, "requests.csv")):
                ok = False
                notes.append("requests.csv DIFFERS")
            sa_raw, sb_raw = read(os.path.join(a, "summary.json")), read(os.path.join(b, "summary.json"))
            if sa_raw != sb_raw:
                sa, sb = json.loads(sa_raw), json.loads(sb_raw)
                fa, fb = {}, {}
                for field in args.ignore:
                    strip_fields(sa, field.split("."), args.ignore, fa)
                    strip_fields(sb, field.split("."), args.ignore, fb)
                if sa != sb:
                    ok = False
                    notes.append("summary.json DIFFERS outside the ignored fields")
                changed = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
                if changed:
                    notes.append("summary.json ignored fields changed: " + ", ".join(changed[:6]) +
                                 (f" (+{len(changed) - 6})" if len(changed) > 6 else ""))
            ta_raw, tb_raw = read(os.path.join(a, "timeline.json")), read(os.path.join(b, "timeline.json"))
            if ta_raw == tb_raw:
                notes.append("timeline.json byte-identical")
            elif spans(json.loads(ta_raw)) == spans(json.loads(tb_raw)):
                notes.append("timeline.json same spans, tracks differ")
            else:
                ok = False
                notes.append("timeline.json spans DIFFER")
            failures += 0 if ok else 1
            print(f"{'same' if ok else 'DIFF'}  {label}: " + "; ".join(notes))
    compared = len(scenarios) - new_only
    print(f"{compared - failures} of {compared} scenarios match" + (f" ({new_only} run by the newer build only)" if new_only else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
