#!/usr/bin/env python3
"""The seed system's swap-in method as a baseline for `computron bench swap`.

Computron's seed (Python on Colossal-AI) moved a model to the GPU tensor by tensor:
`tensor.to("cuda", non_blocking=True)` from pinned host memory. This script times exactly that
on OPT-shaped tensors (every weight and bias of the Hugging Face OPT layout, fp16):

  one GPU:   every tensor to cuda:0, then synchronize
  two GPUs:  two threads, each copying its half (rows) of every tensor to its own GPU

Host tensors are views of one buffer pinned with cudaHostRegister (portable), as the runtime's
store is, so both sides read the same kind of memory. Warm-up first, then the median of the
repetitions. Writes JSON that `computron bench swap --baseline FILE` prints beside its rows.
"""
import argparse
import datetime
import json
import statistics
import threading
import time

import torch

OPT = {
    # name: (layers, hidden, ffn, vocab, max_positions)
    "opt-6.7b": (32, 4096, 16384, 50272, 2048),
    "opt-13b": (40, 5120, 20480, 50272, 2048),
    "opt-30b": (48, 7168, 28672, 50272, 2048),
}


def opt_shapes(name):
    layers, h, ffn, vocab, max_pos = OPT[name]
    shapes = [(vocab, h), (max_pos + 2, h)]
    for _ in range(layers):
        for _ in range(4):  # q, k, v, out projections
            shapes += [(h, h), (h,)]
        shapes += [(h,), (h,)]  # self-attention layer norm
        shapes += [(ffn, h), (ffn,), (h, ffn), (h,)]  # fc1, fc2
        shapes += [(h,), (h,)]  # final layer norm of the layer
    shapes += [(h,), (h,)]  # final layer norm (the LM head is tied to the embedding)
    return shapes


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


class PinnedTensors:
    def __init__(self, shapes):
        total = sum(numel(s) for s in shapes)
        self.buf = torch.empty(total, dtype=torch.float16)
        self.buf.view(torch.int16).fill_(0x2E66)  # touch every page with a non-zero fp16 value
        self.registered = False
        try:
            err = torch.cuda.cudart().cudaHostRegister(self.buf.data_ptr(), self.buf.numel() * 2, 1)  # portable
            self.registered = int(err) == 0
        except Exception:  # noqa: BLE001 - fall back to PyTorch's own pinned allocator
            self.registered = False
        if not self.registered:
            self.buf = self.buf.pin_memory()
        self.tensors = []
        off = 0
        for s in shapes:
            n = numel(s)
            self.tensors.append(self.buf[off:off + n].view(s))
            off += n
        self.bytes = total * 2

    def close(self):
        if self.registered:
            torch.cuda.cudart().cudaHostUnregister(self.buf.data_ptr())
        self.tensors = []
        self.buf = None


def one_gpu(tensors):
    torch.cuda.synchronize(0)
    t0 = time.perf_counter()
    out = [t.to("cuda:0", non_blocking=True) for t in tensors]
    torch.cuda.synchronize(0)
    dt = time.perf_counter() - t0
    del out
    return dt


def two_gpus(tensors):
    halves = [[], []]
    for t in tensors:
        rows = t.shape[0]
        halves[0].append(t[: rows // 2])
        halves[1].append(t[rows // 2:])
    outs = [None, None]
    barrier = threading.Barrier(3)

    def work(g):
        torch.cuda.set_device(g)
        barrier.wait()
        outs[g] = [t.to(f"cuda:{g}", non_blocking=True) for t in halves[g]]
        torch.cuda.synchronize(g)

    threads = [threading.Thread(target=work, args=(g,)) for g in (0, 1)]
    for th in threads:
        th.start()
    for g in (0, 1):
        torch.cuda.synchronize(g)
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t0
    outs.clear()
    return dt


def measure(fn, tensors, nbytes, warmup, reps):
    for _ in range(warmup):
        fn(tensors)
    samples = [nbytes / fn(tensors) / 1e9 for _ in range(reps)]
    return statistics.median(samples), samples


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="opt-13b,opt-6.7b")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default="torch_swap_baseline.json")
    args = ap.parse_args()

    report = {
        "method": "PyTorch per-tensor .to('cuda', non_blocking=True) from pinned (cudaHostRegister) memory",
        "card": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "models": {},
    }
    for name in args.models.split(","):
        shapes = opt_shapes(name)
        host = PinnedTensors(shapes)
        row = {"tensors": len(shapes), "bytes": host.bytes, "pinned_with": "cudaHostRegister" if host.registered else "pin_memory"}
        row["one_gpu_gbps"], row["one_gpu_samples"] = measure(one_gpu, host.tensors, host.bytes, args.warmup, args.reps)
        if torch.cuda.device_count() >= 2:
            row["two_gpu_gbps"], row["two_gpu_samples"] = measure(two_gpus, host.tensors, host.bytes, args.warmup, args.reps)
        host.close()
        torch.cuda.empty_cache()
        report["models"][name] = row
        print(f"{name}: {len(shapes)} tensors, {host.bytes / 1e9:.2f} GB: one GPU {row['one_gpu_gbps']:.1f} GB/s"
              + (f", two GPUs (two threads) {row['two_gpu_gbps']:.1f} GB/s" if "two_gpu_gbps" in row else ""),
              flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
