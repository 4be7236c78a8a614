#!/usr/bin/env python3
"""`computron serve` against transformers on one checkpoint (device check, scripts/serve-check.sh).

Sends greedy completions (token-id prompts, `ignore_eos`) to a running server, streamed and not,
and compares the ids with transformers' greedy generate on the same checkpoint in fp32; checks
that a seeded sampled request repeats exactly; with --tokenizer-folder, also sends a text prompt
and compares the ids the server used (usage.prompt_tokens) and the decoded text with the
`tokenizers` library's. Prints one line per check (SERVE-REF ok|FAIL ...) and exits 1 on any
failure.

Usage: serve_reference.py --url http://127.0.0.1:PORT --model NAME --checkpoint DIR [--new 16]
"""
import argparse
import json
import sys
import urllib.request


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.read().decode()


def complete(url, body):
    return json.loads(post(url + "/v1/completions", body))


def stream_ids(url, body):
    body = dict(body, stream=True)
    raw = post(url + "/v1/completions", body)
    ids, reasons, done = [], [], False
    for line in raw.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            continue
        ev = json.loads(data)
        for c in ev.get("choices", []):
            ids.extend(c.get("token_ids", []))
            if c.get("finish_reason"):
                reasons.append(c["finish_reason"])
    return ids, reasons, done


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--tokenizer-folder", help="the folder whose tokenizer.json the server uses for this model")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, torch_dtype=torch.float32).cuda().eval()
    vocab = model.config.vocab_size
    failures = 0
    gen = torch.Generator().manual_seed(0)
    for p in range(args.prompts):
        length = 8 + 9 * p
        prompt = torch.randint(3, vocab, (length,), generator=gen).tolist()
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]).cuda(), max_new_tokens=args.new, do_sample=False,
                                 min_new_tokens=args.new, pad_token_id=0)
        want = out[0, len(prompt):].tolist()
        body = {"model": args.model, "prompt": prompt, "max_tokens": args.new, "temperature": 0, "ignore_eos": True}
        got = complete(args.url, body)["choices"][0]["token_ids"]
        streamed, reasons, done = stream_ids(args.url, body)
        same = sum(1 for a, b in zip(got, want) if a == b)
        first_diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        ok = got == want and streamed == got and done and reasons == ["length"]
        failures += 0 if ok else 1
        print(f"SERVE-REF {'ok' if ok else 'FAIL'} greedy prompt {p} ({length} tokens): {same}/{len(want)} ids equal to "
              f"transformers fp32 (first difference at {first_diff}); streamed equal: {streamed == got}; "
              f"[DONE]: {done}; finish: {reasons}")
        if not ok:
            print(f"  server:       {got}\n  transformers: {want}")

    sampled = {"model": args.model, "prompt": [5, 6, 7, 8], "max_tokens": args.new, "temperature": 0.9, "top_p": 0.95,
               "seed": 1234, "ignore_eos": True}
    a = complete(args.url, sampled)["choices"][0]["token_ids"]
    b = complete(args.url, sampled)["choices"][0]["token_ids"]
    c = complete(args.url, dict(sampled, seed=4321))["choices"][0]["token_ids"]
    ok = a == b and a != c
    failures += 0 if ok else 1
    print(f"SERVE-REF {'ok' if ok else 'FAIL'} seeded sampling: same seed repeats: {a == b}; another seed differs: {a != c}")

    # A stop id ends the stream early with finish_reason "stop".
    greedy = {"model": args.model, "prompt": [5, 6, 7, 8], "max_tokens": args.new, "temperature": 0, "ignore_eos": True}
    full = complete(args.url, greedy)["choices"][0]["token_ids"]
    stop_at = full[3]
    first = full.index(stop_at)
    r = complete(args.url, dict(greedy, stop_token_ids=[stop_at]))["choices"][0]
    ok = r["token_ids"] == full[:first + 1] and r["finish_reason"] == "stop"
    failures += 0 if ok else 1
    print(f"SERVE-REF {'ok' if ok else 'FAIL'} stop_token_ids: {len(r['token_ids'])} tokens, finish {r['finish_reason']}")
    if args.tokenizer_folder:
        # Text in and out: the server's tokenizer (the folder's tokenizer.json) against the
        # `tokenizers` library on the same file.
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(args.tokenizer_folder + "/tokenizer.json")
        text = "Hello world, it's 2026! Ünïcödé and 1234567 digits."
        r = complete(args.url, {"model": args.model, "prompt": text, "max_tokens": args.new, "temperature": 0,
                                "ignore_eos": True})
        want_prompt = len(tok.encode(text).ids)
        choice = r["choices"][0]
        decoded = tok.decode(choice["token_ids"], skip_special_tokens=True)
        ok = r["usage"]["prompt_tokens"] == want_prompt and choice["text"] == decoded
        failures += 0 if ok else 1
        print(f"SERVE-REF {'ok' if ok else 'FAIL'} text prompt: {r['usage']['prompt_tokens']} prompt tokens "
              f"(tokenizers: {want_prompt}); output text equals tokenizers' decode of its ids: {choice['text'] == decoded}")
        body = {"model": args.model, "messages": [{"role": "user", "content": "Hi there"}], "max_tokens": args.new,
                "temperature": 0, "ignore_eos": True, "stream": True}
        raw = post(args.url + "/v1/chat/completions", body)
        pieces, ids = [], []
        for line in raw.splitlines():
            if line.startswith("data: ") and line[6:] != "[DONE]":
                for c in json.loads(line[6:]).get("choices", []):
                    pieces.append(c["delta"].get("content", ""))
                    ids.extend(c["delta"].get("token_ids", []))
        plain = "user: Hi there\n\nassistant: "
        streamed = "".join(pieces)
        ok = streamed == tok.decode(ids, skip_special_tokens=True) and len(ids) == args.new
        failures += 0 if ok else 1
        print(f"SERVE-REF {'ok' if ok else 'FAIL'} chat (plain template '{plain!r}'), streamed: {len(ids)} tokens, "
              f"streamed text equals tokenizers' decode: {streamed == tok.decode(ids, skip_special_tokens=True)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
