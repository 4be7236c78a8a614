#!/usr/bin/env python3
"""Writes scenarios/fleet-64x8-1000models.json: 1,000 models of mixed sizes and TP x PP on the
fleet-64x8 preset (64 nodes of 8 H100s, 512 GPUs), Zipf popularity, bursty Gamma arrivals.

Each node holds 15 models: 8 seven-to-eight-billion models at TP 1 (one per GPU), 4 thirteen-billion
at TP 2 (one per GPU pair), 2 OPT-30B at TP 4 (one per half node) and one Llama-2-70B at TP 4 x PP 2
(the whole node): 960 models. Nodes 0-39 are also paired (0-1, 2-3, ...) and each pair holds two
Llama-3-70B at TP 8 x PP 2, whose pipeline boundary crosses the network: 40 more. Weight budgets
of 40 GB per GPU hold about half of what is placed on a GPU, so models swap.

The shipped file runs 10 s of traffic so that the test suite stays quick; `--set duration_s=3600`
runs the hour. Model order is shuffled with a fixed seed so that Zipf popularity falls on every
size and node, not on node 0's models.
"""
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["llama-2-7b", "mistral-7b", "qwen2-7b", "llama-3-8b"]
MEDIUM = ["opt-13b", "llama-2-13b"]


def models():
    out = []
    for node in range(64):
        base = node * 8
        for i in range(8):
            out.append({"spec": SMALL[(node + i) % len(SMALL)], "tp": 1, "gpus": [base + i]})
        for i in range(4):
            out.append({"spec": MEDIUM[(node + i) % len(MEDIUM)], "tp": 2, "gpus": [base + 2 * i, base + 2 * i + 1]})
        for i in range(2):
            out.append({"spec": "opt-30b", "tp": 4, "gpus": [base + 4 * i + k for k in range(4)]})
        out.append({"spec": "llama-2-70b", "tp": 4, "pp": 2, "gpus": [base + k for k in range(8)]})
    for pair in range(20):
        base = pair * 16
        for _ in range(2):
            out.append({"spec": "llama-3-70b", "tp": 8, "pp": 2, "gpus": [base + k for k in range(16)]})
    random.Random(18).shuffle(out)
    for i, m in enumerate(out):
        m["name"] = f"{m['spec']}-{i:04d}"
        m.setdefault("pp", 1)
        m["max_batch"] = 16
    return [{k: m[k] for k in ("name", "spec", "tp", "pp", "gpus", "max_batch")} for m in out]


def main():
    scenario = {
        "name": "fleet-64x8-1000models",
        "description": "1,000 models of mixed sizes and TP x PP on 64 nodes of 8 H100s (512 GPUs), Zipf "
                       "popularity, bursty Gamma arrivals (CV 4); 10 s shipped, --set duration_s=3600 for "
                       "the hour (bench/make_fleet_scenario.py writes it)",
        "seed": 1,
        "duration_s": 10,
        "cluster": {"preset": "fleet-64x8", "weight_budget_gb": 40},
        "models": models(),
        "workload": {"type": "gamma", "rate": 200, "zipf_alpha": 1.0, "cv": 4,
                     "prompt_tokens": {"dist": "lognormal", "mean": 512, "cv": 1, "max": 4096},
                     "output_tokens": {"dist": "lognormal", "mean": 32, "cv": 1, "max": 256}},
        "policy": "lru-bytes",
        "slo_ms": 10000,
        "outputs": {"dir": "out/fleet-64x8-1000models"},
    }
    path = os.path.join(ROOT, "scenarios", "fleet-64x8-1000models.json")
    with open(path, "w") as f:
        # One model a line: readable, and diffs stay small.
        f.write("{\n")
        keys = list(scenario)
        for k in keys:
            end = ",\n" if k != keys[-1] else "\n"
            if k == "models":
                f.write('  "models": [\n')
                f.write(",\n".join("    " + json.dumps(m) for m in scenario["models"]))
                f.write("\n  ]" + end)
            else:
                f.write(f"  {json.dumps(k)}: {json.dumps(scenario[k])}{end}")
        f.write("}\n")
    print(path)


if __name__ == "__main__":
    main()
