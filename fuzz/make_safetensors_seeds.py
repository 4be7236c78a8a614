#!/usr/bin/env python3
"""Writes small valid safetensors files into the folder given, as seeds for fuzz_safetensors."""
import json
import os
import struct
import sys


def write(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, elem) in tensors.items():
        n = elem
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        blobs.append(bytes((i * 7 + 3) % 256 for i in range(n)))
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


out = sys.argv[1]
os.makedirs(out, exist_ok=True)
write(os.path.join(out, "f16.safetensors"), {"w": ("F16", [2, 3], 2)})
write(os.path.join(out, "mixed.safetensors"),
      {"a.weight": ("BF16", [4, 2], 2), "a.bias": ("F32", [4], 4), "ids": ("I64", [3], 8)}, {"format": "pt"})
write(os.path.join(out, "empty.safetensors"), {})
write(os.path.join(out, "scalar.safetensors"), {"s": ("F16", [], 2)})
