#!/usr/bin/env python3
"""Writes the fidelity cases (docs/specs.md, "Profiles"; bench/results/fidelity-*.md) into
scenarios/fidelity/: the seed's random workloads with 3 and 6 OPT-13B models (rates 1 req/s each),
Gamma CV 1 and 4, on 2 x H200 at TP 2, two resident at a time, with one-token requests (prompt 64)
and multi-token requests (prompt 256, output 32), under the `computron` and `best` policy sets.

The models share one weights label, so the runtime's host store holds one copy (a 6-model replay
then fills and pins 26 GB, not 156 GB); all are placed on GPUs 0 and 1, so no copy from a twin
(another GPU) is possible and the label changes nothing else.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "scenarios", "fidelity")


def case(models, cv, kind, policy):
    prompt, output = (64, 1) if kind == "1tok" else (256, 32)
    name = f"fidelity-{models}m-cv{cv}-{kind}-{policy}"
    return name, {
        "name": name,
        "description": f"Fidelity case: {models} OPT-13B models at TP 2 on 2 x H200, rates 1 req/s each, Gamma CV {cv}, "
                       f"prompt {prompt}, output {output}, policy set {policy}, 2 resident",
        "seed": 1,
        "duration_s": 30,
        "cluster": {"preset": "h200x2"},
        "models": [{"name": f"opt-13b-{i}", "spec": "opt-13b", "weights": "opt-13b", "tp": 2, "pp": 1, "gpus": [0, 1],
                    "max_batch": 8} for i in range(models)],
        "workload": {"type": "gamma", "rates": [1] * models, "cv": cv, "prompt_tokens": prompt, "output_tokens": output},
        "policy": {"name": policy, "max_loaded_models": 2},
        "slo_ms": 1000,
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    names = []
    for models in (3, 6):
        for cv in (1, 4):
            for kind in ("1tok", "32tok"):
                for policy in ("computron", "best"):
                    name, doc = case(models, cv, kind, policy)
                    with open(os.path.join(OUT, name + ".json"), "w") as f:
                        json.dump(doc, f, indent=2)
                        f.write("\n")
                    names.append(name)
    print("\n".join(names))


if __name__ == "__main__":
    sys.exit(main())
