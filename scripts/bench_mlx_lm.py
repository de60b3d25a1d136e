#!/usr/bin/env python3
"""Reference side of `cargo rmlx bench --compare-mlx-lm`: runs mlx-lm's own stream_generate
on the given prompt ids (EOS ignored) and prints one JSON line with the timings and the
process's peak RSS. Run with the oracle venv's python (scripts/oracle-venv.sh)."""
import argparse
import json
import time

from bench_common import patch_gather_qmm, peak_rss_mib

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm import load
from mlx_lm.generate import stream_generate

patch_gather_qmm()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt-ids", required=True, help="JSON list of token ids")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--dtype", choices=["model", "float32"], default="model")
    a = ap.parse_args()

    model, tokenizer = load(a.model)
    if a.dtype == "float32":
        model.update(
            tree_map(
                lambda p: p.astype(mx.float32)
                if mx.issubdtype(p.dtype, mx.floating)
                else p,
                model.parameters(),
            )
        )
    tokenizer.eos_token_ids = set()  # ignore EOS, as rmlx's side does
    ids = mx.array(json.loads(a.prompt_ids))
    # Warm-up on the full prompt, like the rmlx side (which warms up once per prompt length
    # in its long-lived process): kernels for this prompt length are compiled/loaded before
    # the timed run, so a GPU run does not time NVRTC/JIT compilation.
    for _ in stream_generate(model, tokenizer, ids, max_tokens=2):
        pass
    start = time.perf_counter()
    first = None
    n = 0
    for resp in stream_generate(model, tokenizer, ids, max_tokens=a.max_tokens):
        if first is None:
            first = time.perf_counter()
        n = resp.generation_tokens
    end = time.perf_counter()
    rss_mib = peak_rss_mib()
    print(
        json.dumps(
            {
                "prompt_tokens": int(ids.size),
                "ttft_s": first - start,
                "decode_tokens": n,
                "decode_s": end - first,
                "peak_rss_mib": rss_mib,
            }
        )
    )


if __name__ == "__main__":
    main()
