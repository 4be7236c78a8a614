#!/usr/bin/env python3
"""Writes the seed paper's experiments as scenario files in scenarios/.

Run from the repository root: python3 scripts/make_scenarios.py
"""
import json
import pathlib

OUT = pathlib.Path(__file__).resolve().parent.parent / "scenarios"


def write(name, doc):
    doc = {"name": name, **doc}
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")


# Swap test: two OPT-13B models, one resident at a time, requests alternating (each waits for
# the previous answer), on the seed's node of 4 x A100-40GB.
for tp, pp in [(1, 1), (2, 1), (4, 1), (1, 2), (1, 4), (2, 2)]:
    write(f"swap-opt13b-tp{tp}pp{pp}", {
        "description": f"Seed swap test: two OPT-13B models (TP {tp}, PP {pp}), one resident, alternating requests",
        "seed": 1,
        "cluster": {"preset": "a100-40gb-x4"},
        "models": [{"name": "opt-13b", "spec": "opt-13b", "count": 2, "tp": tp, "pp": pp, "max_batch": 1}],
        "workload": {"type": "alternating", "requests": 20, "think_time_ms": 0,
                     "prompt_tokens": 64, "output_tokens": 1},
        "policy": {"name": "computron", "max_loaded_models": 1},
    })

# Random workloads: Gamma arrivals, TP 2 x PP 2 over the node, 30 s each.
MIXES = {3: [(1, 1, 1), (10, 1, 1), (10, 10, 1)],
         6: [(1,) * 6, (10, 10, 1, 1, 1, 1), (10, 10, 10, 10, 1, 1)]}
SETUP = {3: {"resident": 2, "batch": 8}, 6: {"resident": 4, "batch": 32}}
for models, mixes in MIXES.items():
    for mix in mixes:
        for cv in (0.25, 1, 4):
            mix_name = "-".join(str(r) for r in mix)
            write(f"random-{models}models-rates{mix_name}-cv{cv:g}", {
                "description": f"Seed random workload: {models} OPT-13B models, {SETUP[models]['resident']} resident, "
                               f"batch {SETUP[models]['batch']}, Gamma CV {cv:g}, rates {list(mix)} req/s",
                "seed": 1,
                "duration_s": 30,
                "cluster": {"preset": "a100-40gb-x4"},
                "models": [{"name": "opt-13b", "spec": "opt-13b", "count": models, "tp": 2, "pp": 2,
                            "gpus": "all", "max_batch": SETUP[models]["batch"]}],
                "workload": {"type": "gamma", "rates": list(mix), "cv": cv,
                             "prompt_tokens": 64, "output_tokens": 1},
                "policy": {"name": "computron", "max_loaded_models": SETUP[models]["resident"]},
                "slo_ms": 1000,
            })

# The Azure LLM conversation trace (first 10 minutes) on the measured 2 x H200 machine: fourteen
# models of two sizes, TP 2, assigned by Zipf popularity; together they need about 152 GB a GPU,
# more than the 120 GiB weight budget, so the less popular ones swap.
write("azure-conv-h200x2", {
    "description": "Azure LLM conversation trace (its first 600 s, slowed 3x) over fourteen models on 2 x H200, "
                   "TP 2, Zipf popularity",
    "seed": 1,
    "duration_s": 1800,
    "cluster": {"preset": "h200x2"},
    "models": [
        {"name": "llama-2-13b", "spec": "llama-2-13b", "count": 8, "tp": 2, "gpus": "all", "max_batch": 32},
        {"name": "llama-3-8b", "spec": "llama-3-8b", "count": 6, "tp": 2, "gpus": "all", "max_batch": 32},
    ],
    "workload": {"type": "trace", "format": "azure", "path": "../traces/AzureLLMInferenceTrace_conv.csv",
                 "assign": "zipf", "zipf_alpha": 1.0, "time_scale": 3},
    "policy": {"name": "lru-bytes"},
    "slo_ms": 10000,
})
