"""Counts the primitives of one mlx-lm decode step (the reference for rmlx's RMLX_GRAPH_DOT).

usage: python scripts/mlx_lm_graph.py MODEL_DIR OUT_PREFIX [--batch 1,16] [--prompt 32]
                                     [--dtype float32]

For each batch size B: a prompt of `--prompt` tokens per row is run through mlx-lm's model
with its default prompt cache and evaluated; then the graph of one more step (B rows, one
token each, logits of the last position) is written with `mx.export_to_dot` to
OUT_PREFIX.bB.dot, and its primitives, counted by name, to OUT_PREFIX.bB.txt (the same
format as rmlx's `RMLX_GRAPH_DOT` dumps). MLX draws primitives as rectangles. `--dtype`
casts the model's float parameters first (float32: rmlx's CPU dtype). All rows of a batch
share one plain prompt cache of the same length: no padding mask (mlx-lm's batch generator
adds one per step).
"""

import argparse
import collections
import re

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache


def count(dot_path):
    names = collections.Counter()
    for line in open(dot_path):
        if "shape=rectangle" in line:
            m = re.search(r'label\s*=\s*"([^"]*)"', line)
            if m:
                names[m.group(1)] += 1
    return names


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--dtype", help="cast float parameters to this dtype (e.g. float32)")
    a = ap.parse_args()
    model, _ = load(a.model)
    if a.dtype:
        model.set_dtype(getattr(mx, a.dtype))
    for b in [int(x) for x in a.batch.split(",")]:
        cache = make_prompt_cache(model)
        prompt = mx.ones((b, a.prompt), dtype=mx.int32)
        mx.eval(model(prompt, cache=cache), [c.state for c in cache])
        step = model(mx.ones((b, 1), dtype=mx.int32), cache=cache)[:, -1, :]
        dot = f"{a.out}.b{b}.dot"
        mx.export_to_dot(dot, step)
        names = count(dot)
        with open(f"{a.out}.b{b}.txt", "w") as f:
            f.write(f"total {sum(names.values())}\n")
            for name, n in sorted(names.items()):
                f.write(f"{name} {n}\n")
        print(f"mlx-lm b{b}: {sum(names.values())} primitives", dict(names.most_common()))


if __name__ == "__main__":
    main()
