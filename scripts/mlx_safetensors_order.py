#!/usr/bin/env python3
"""How MLX's `save_safetensors` lays out a file (what `mlx_lm convert` writes), checked on a
real output: the header is nlohmann::json's compact dump with sorted keys and no padding, and
the tensors' data follow the iteration order of the `std::unordered_map<std::string, array>`
nanobind builds from the Python dict — libstdc++'s hash table (`std::_Hash_bytes`, seed
0xc70f6907; buckets 13, 29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, … as it grows; a new
key goes first in its bucket, a key in an empty bucket first in the list, a rehash walks the
old list) fed with the keys in `tree_flatten(model.parameters())` order, i.e. the mlx-lm
model class's attribute order. A byte-identical `cargo rmlx build` needs that insertion order
per architecture. Run with the reference venv's python:

    mlx_safetensors_order.py check <mlx_lm convert output dir>
"""
import json
import struct
import sys
from pathlib import Path

MASK = (1 << 64) - 1
MUL = ((0xC6A4A793 << 32) + 0x5BD1E995) & MASK
SEED = 0xC70F6907
# bucket_count() of a default std::unordered_map as it grows (libstdc++'s prime rehash policy)
BUCKETS = [13, 29, 59, 127, 257, 541, 1109, 2357, 5087, 10273, 20753, 42043, 85229, 172933]


def _mix(v):
    return v ^ (v >> 47)


def std_hash(data: bytes) -> int:
    """std::hash<std::string> of libstdc++ on 64-bit (std::_Hash_bytes)."""
    n = len(data)
    h = SEED ^ ((n * MUL) & MASK)
    whole = n & ~7
    for i in range(0, whole, 8):
        word = struct.unpack_from("<Q", data, i)[0]
        h = ((h ^ ((_mix((word * MUL) & MASK) * MUL) & MASK)) * MUL) & MASK
    if n & 7:
        h = ((h ^ int.from_bytes(data[whole:], "little")) * MUL) & MASK
    return _mix((_mix(h) * MUL) & MASK)


def iteration_order(keys):
    """The order a libstdc++ unordered_map iterates `keys` emplaced in this order."""
    hashes = {k: std_hash(k.encode()) for k in keys}
    nodes, n_buckets = [], 0
    for k in keys:
        if len(nodes) + 1 > n_buckets:
            n_buckets = next(b for b in BUCKETS if b > n_buckets and b >= len(nodes) + 1)
            nodes = _rehash(nodes, hashes, n_buckets)
        bucket = hashes[k] % n_buckets
        at = next((i for i, x in enumerate(nodes) if hashes[x] % n_buckets == bucket), 0)
        nodes.insert(at, k)
    return nodes


def _rehash(nodes, hashes, n_buckets):
    runs, heads = {}, []
    for k in nodes:
        b = hashes[k] % n_buckets
        if b not in runs:
            runs[b] = [k]
            heads.insert(0, b)
        else:
            runs[b].insert(0, k)
    return [k for b in heads for k in runs[b]]


def check(model_dir: Path):
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model

    model, _ = load_model(model_dir)
    keys = [k for k, _ in tree_flatten(model.parameters())]
    with open(model_dir / "model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = f.read(n)
    h = json.loads(header)
    on_disk = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
    compact = json.dumps(h, separators=(",", ":"), sort_keys=True).encode()
    print(json.dumps({
        "tensors": len(keys),
        "data_order_predicted": iteration_order(keys) == on_disk,
        "header_compact_sorted_unpadded": header == compact,
    }))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "check":
        sys.exit(__doc__)
    check(Path(sys.argv[2]))
