#!/usr/bin/env python3
"""llama.cpp as the oracle of a GGUF import (tests/e2e/tiny_gguf.rs): evaluates the given
prompt ids on a GGUF file (float32 KV cache), then decodes greedily (EOS ignored) and prints
one JSON line: `generated_ids`, and per step the top-1 id and logit and the top-1/top-2
margin relative to |top-1|. The ids are passed as they are (the GGUF's vocabulary is the
one the imported directory's tokenizer was built from). Run with the llama venv's python
(scripts/llama-venv.sh)."""
import argparse
import json

import numpy as np
from llama_cpp import Llama

GGML_TYPE_F32 = 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--prompt-ids", required=True, help="JSON list of token ids")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--n-ctx", type=int, default=0, help="0: prompt + steps + 16")
    a = ap.parse_args()

    ids = [int(i) for i in json.loads(a.prompt_ids)]
    llm = Llama(
        model_path=a.gguf,
        n_ctx=a.n_ctx or len(ids) + a.steps + 16,
        n_batch=max(512, len(ids)),
        n_threads=1,
        logits_all=True,
        # float32 KV cache (llama.cpp's default is f16): the comparison is in float32.
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        verbose=False,
    )
    llm.reset()
    llm.eval(ids)
    generated, steps = [], []
    for _ in range(a.steps):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        order = np.argsort(-logits)
        top, second = int(order[0]), int(order[1])
        steps.append(
            {
                "id": top,
                "logit": float(logits[top]),
                "margin": float((logits[top] - logits[second]) / max(abs(logits[top]), 1e-30)),
            }
        )
        generated.append(top)
        llm.eval([top])
    print(json.dumps({"prompt_ids": ids, "generated_ids": generated, "steps": steps}))


if __name__ == "__main__":
    main()
