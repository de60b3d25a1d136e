#!/usr/bin/env python3
"""Reference side of `cargo rmlx bench --compare-llama-cpp`: llama.cpp (through
llama-cpp-python, built from source by scripts/llama-venv.sh) evaluates the given prompt ids
on a GGUF file, then decodes greedily (EOS ignored), and prints one JSON line with the same
fields as scripts/bench_mlx_lm.py: prompt_tokens, ttft_s, decode_tokens, decode_s,
peak_rss_mib. The ids are passed as they are: the GGUF's vocabulary is the one the MLX
model directory's tokenizer was built from. Run with the llama venv's python."""
import argparse
import json
import os
import time

from bench_common import peak_rss_mib

from llama_cpp import Llama


def greedy(llm, ids, max_tokens):
    """Yields (token, time) for `max_tokens` greedy tokens after evaluating `ids`."""
    llm.reset()  # no KV-cache prefix reuse between runs
    gen = llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    for n, token in enumerate(gen, start=1):
        yield token, time.perf_counter()
        if n >= max_tokens:
            break
    gen.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--prompt-ids", required=True, help="JSON list of token ids")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="0: the CPUs this process may use")
    a = ap.parse_args()

    ids = [int(i) for i in json.loads(a.prompt_ids)]
    max_tokens = max(a.max_tokens, 1)
    threads = a.threads or len(os.sched_getaffinity(0))
    llm = Llama(
        model_path=a.gguf,
        n_ctx=len(ids) + max_tokens + 16,
        n_batch=max(512, len(ids)),
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    # Warm-up on the full prompt, like the other runners.
    for _ in greedy(llm, ids, 2):
        pass
    start = time.perf_counter()
    first = end = None
    n = 0
    for _, now in greedy(llm, ids, max_tokens):
        n += 1
        if first is None:
            first = now
        end = now
    rss_mib = peak_rss_mib()
    print(
        json.dumps(
            {
                "prompt_tokens": len(ids),
                "ttft_s": first - start,
                "decode_tokens": n,
                "decode_s": end - first,
                "peak_rss_mib": rss_mib,
                "threads": threads,
            }
        )
    )


if __name__ == "__main__":
    main()
