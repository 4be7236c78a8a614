#!/usr/bin/env python3
"""Hugging Face transformers side of scripts/model-check.sh.

  make     build a small random OPT, Llama, Qwen2 or Mistral model (fixed seed), save it as
           safetensors with a requests.json of prompts of different lengths
  compare  our logits and tokens against transformers in fp32 on the same weights
  same     fraction of identical tokens between two of our runs (TP/PP vs TP=1, sampling seeds)
  bench    transformers eager speed (prefill and decode) for OPT-6.7B / Llama-3-8B shapes
"""
import argparse
import json
import sys
import time

import numpy as np
import torch
import transformers


def load_kwargs(dtype):
    return {"dtype": dtype, "attn_implementation": "eager"}


ARCHS = ["opt", "llama", "qwen2", "mistral"]


def make_config(arch, layers, hidden, heads, kv_heads, ffn, vocab, tie=None, sliding_window=4096):
    if arch == "opt":
        return transformers.OPTConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=heads, ffn_dim=ffn, max_position_embeddings=2048,
                                      word_embed_proj_dim=hidden, do_layer_norm_before=True,
                                      tie_word_embeddings=True if tie is None else tie, bos_token_id=2, eos_token_id=2,
                                      pad_token_id=1)
    shape = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 num_key_value_heads=kv_heads, intermediate_size=ffn, tie_word_embeddings=bool(tie))
    if arch == "llama":
        return transformers.LlamaConfig(**shape, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                                        bos_token_id=1, eos_token_id=2)
    if arch == "qwen2":
        # Qwen2-7B's numbers: rope_theta 1e6, rms_norm_eps 1e-6; no sliding window.
        return transformers.Qwen2Config(**shape, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                        use_sliding_window=False, bos_token_id=1, eos_token_id=2)
    if arch == "mistral":
        return transformers.MistralConfig(**shape, max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
                                          sliding_window=sliding_window, bos_token_id=1, eos_token_id=2)
    raise SystemExit(f"unknown arch {arch}")


def cmd_make(a):
    torch.manual_seed(a.seed)
    cfg = make_config(a.arch, a.layers, a.hidden, a.heads, a.kv_heads, a.ffn, a.vocab,
                      tie={"yes": True, "no": False}.get(a.tie), sliding_window=a.sliding_window)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    if a.arch == "qwen2":
        # transformers initialises biases to zero, which would not test them: Qwen2's q/k/v biases
        # get values of the size trained checkpoints have.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
                    p.normal_(0.0, 0.5)
    model = model.to(getattr(torch, a.dtype))
    model.config.torch_dtype = a.dtype
    model.save_pretrained(a.out, safe_serialization=True)
    # config.json must say the dtype we saved
    with open(f"{a.out}/config.json") as f:
        c = json.load(f)
    c["torch_dtype"] = a.dtype
    c["dtype"] = a.dtype
    with open(f"{a.out}/config.json", "w") as f:
        json.dump(c, f, indent=1)
    rng = np.random.default_rng(a.seed)
    if a.lengths:
        lengths = [int(n) for n in a.lengths.split(",")]
    else:
        lengths = [5, 17, 32, 61][: a.batch] if a.batch <= 4 else list(rng.integers(4, 64, a.batch))
    prompts = [[int(t) for t in rng.integers(3, a.vocab, int(n))] for n in lengths]
    with open(f"{a.out}/requests.json", "w") as f:
        json.dump({"prompts": prompts, "max_new_tokens": a.new}, f)
    print(f"made {a.arch} layers={a.layers} hidden={a.hidden} dtype={a.dtype} at {a.out}")


@torch.no_grad()
def cmd_compare(a):
    dev = "cuda"
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, **load_kwargs(torch.float32)).to(dev).eval()
    req = json.load(open(a.requests))
    ours = json.load(open(a.ours))["tokens"]
    vocab = model.config.vocab_size
    steps = req["max_new_tokens"]
    batch = len(req["prompts"])
    logits = np.fromfile(a.logits, dtype=np.float32).reshape(steps, batch, vocab)
    rel_errs, forced_agree, free_agree, total = [], 0, 0, 0
    for b, prompt in enumerate(req["prompts"]):
        gen = ours[b][:steps]
        full = torch.tensor([prompt + gen], device=dev)
        ref = model(full).logits[0].float().cpu().numpy()  # teacher-forced on our tokens
        p = len(prompt)
        for k in range(steps):
            r = ref[p - 1 + k]
            o = logits[k, b]
            rel_errs.append(float(np.linalg.norm(o - r) / np.linalg.norm(r)))
            forced_agree += int(np.argmax(r) == gen[k])
        # free-running greedy in fp32
        out = model.generate(torch.tensor([prompt], device=dev), max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, pad_token_id=0)
        hf = out[0, p:].tolist()
        free_agree += sum(int(x == y) for x, y in zip(hf, gen))
        total += steps
    result = {
        "model": a.model, "label": a.label,
        "logits_rel_err_max": max(rel_errs), "logits_rel_err_mean": float(np.mean(rel_errs)),
        "prefill_rel_err_max": max(rel_errs[k] for k in range(0, len(rel_errs), steps)),
        "greedy_teacher_forced_agreement": forced_agree / total,
        "greedy_free_running_identical": free_agree / total,
        "positions": total,
    }
    result["pass"] = result["logits_rel_err_max"] <= 1e-2 and result["greedy_teacher_forced_agreement"] >= 0.95
    print("COMPARE " + json.dumps(result))


def cmd_same(a):
    x = json.load(open(a.a))["tokens"]
    y = json.load(open(a.b))["tokens"]
    same = sum(int(p == q) for s, t in zip(x, y) for p, q in zip(s, t))
    total = sum(len(s) for s in x)
    print("SAME " + json.dumps({"label": a.label, "identical": same / max(total, 1), "positions": total}))


@torch.no_grad()
def cmd_bench(a):
    dev = "cuda"
    if a.arch == "opt":
        cfg = transformers.OPTConfig(vocab_size=50272, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                     ffn_dim=16384, max_position_embeddings=2048, word_embed_proj_dim=4096)
    else:
        cfg = transformers.LlamaConfig(vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                                       num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=8192,
                                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    cfg._attn_implementation = a.attn
    with torch.device(dev):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float16).eval()
    gen = torch.Generator(device=dev).manual_seed(0)
    for batch in [int(b) for b in a.batch.split(",")]:
        ids = torch.randint(3, cfg.vocab_size, (batch, a.prompt), device=dev, generator=gen)
        model(ids[:, :16])  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(ids, use_cache=True)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - t0
        # Repeated prefill (after that full-size warm-up): median of 5, with logits for every
        # position (what model(ids) does) and for the last one only (what generation needs).
        def timed(**kw):
            times = []
            for _ in range(5):
                torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.no_grad():
                    model(ids, use_cache=True, **kw)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            return sorted(times)[len(times) // 2]
        prefill_all = timed()
        try:
            prefill_last = timed(logits_to_keep=1)
        except TypeError:
            prefill_last = float("nan")
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        total = time.perf_counter() - t0
        step = (total - prefill) / (a.new - 1)
        print("HFBENCH " + json.dumps({"arch": a.arch, "attn": a.attn, "batch": batch, "prompt": a.prompt, "new_tokens": a.new,
                                       "prefill_seconds": prefill, "prefill_tokens_per_s": batch * a.prompt / prefill,
                                       "prefill_median5_tokens_per_s": batch * a.prompt / prefill_all,
                                       "prefill_last_logits_median5_tokens_per_s": batch * a.prompt / prefill_last,
                                       "decode_step_ms": step * 1e3, "decode_tokens_per_s": batch / step}), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--arch", choices=ARCHS, required=True)
    m.add_argument("--tie", choices=["yes", "no", "default"], default="default",
                   help="tie_word_embeddings (default: the family's, OPT tied, the others untied)")
    m.add_argument("--sliding-window", type=int, default=4096, help="Mistral's attention window")
    m.add_argument("--layers", type=int, default=2)
    m.add_argument("--hidden", type=int, default=1024)
    m.add_argument("--heads", type=int, default=16)
    m.add_argument("--kv-heads", type=int, default=4)
    m.add_argument("--ffn", type=int, default=4096)
    m.add_argument("--vocab", type=int, default=32000)
    m.add_argument("--dtype", default="float16")
    m.add_argument("--batch", type=int, default=4)
    m.add_argument("--new", type=int, default=16)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--lengths", default="", help="comma-separated prompt lengths (overrides --batch)")
    m.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    for k in ["model", "requests", "ours", "logits", "label"]:
        c.add_argument("--" + k, required=True)
    s = sub.add_parser("same")
    for k in ["a", "b", "label"]:
        s.add_argument("--" + k, required=True)
    b = sub.add_parser("bench")
    b.add_argument("--arch", choices=["opt", "llama"], required=True)
    b.add_argument("--batch", default="1,8,32")
    b.add_argument("--prompt", type=int, default=512)
    b.add_argument("--new", type=int, default=128)
    b.add_argument("--attn", default="eager", help="attention implementation: eager (default), sdpa")
    a = p.parse_args()
    {"make": cmd_make, "compare": cmd_compare, "same": cmd_same, "bench": cmd_bench}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
