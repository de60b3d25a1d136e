#!/usr/bin/env python3
"""Reference run of a model directory with mlx-lm, for the end-to-end tests.

Loads MODEL_DIR with mlx-lm, builds the prompt ids exactly like `mlx_lm generate` does,
runs a greedy loop with mlx-lm's KV cache for --max-tokens steps (EOS is ignored) and
prints one JSON object:

    {"prompt_ids": [...], "generated_ids": [...], "text": "...",  (special tokens skipped)
     "steps": [{"id": i, "top": [[id, logit], ...]}, ...], "dtype": "...", ...}

Logits are the raw float32 values of the top-k entries at each step.
Run it with the venv from scripts/oracle-venv.sh.
"""

import argparse
import json
import math
import sys

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache


def _patch_gather_qmm():
    """mlx-lm 0.32.2's quantized expert layers (QuantizedSwitchLinear) always pass
    `global_scale=self.global_scale` to `mx.gather_qmm`, which is None unless the checkpoint
    has global scales; mlx 0.32.2's `gather_qmm` has no such keyword and rejects the call,
    so every quantized MoE model crashes. Drop the keyword when it is None (it means "no
    global scale", the only thing mlx 0.32.2 can do); any other value is passed on and
    fails as before. Dense and non-MoE models never call gather_qmm."""
    original = mx.gather_qmm

    def gather_qmm(*args, global_scale=None, **kwargs):
        if global_scale is not None:
            kwargs["global_scale"] = global_scale
        return original(*args, **kwargs)

    mx.gather_qmm = gather_qmm


_patch_gather_qmm()


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--prompt", required=True)
    p.add_argument(
        "--chat",
        action="store_true",
        help="render the prompt as one user turn through the chat template",
    )
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument(
        "--dtype",
        choices=["model", "float32"],
        default="model",
        help="model: parameters as stored; float32: cast every floating parameter "
        "(including quantization scales and biases) to float32",
    )
    p.add_argument("--top", type=int, default=5)
    return p.parse_args()


def prompt_ids(tokenizer, text, chat):
    # Mirrors mlx_lm.generate.main: the rendered chat prompt is encoded without special
    # tokens; a bare prompt with the tokenizer's defaults.
    if chat:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            tokenize=False,
        )
        return rendered, tokenizer.encode(rendered, add_special_tokens=False)
    return text, tokenizer.encode(text)


def cast_to_float32(model):
    def cast(x):
        return x.astype(mx.float32) if mx.issubdtype(x.dtype, mx.floating) else x

    model.update(tree_map(cast, model.parameters()))
    leftovers = [
        name
        for name, x in tree_flatten(model.parameters())
        if mx.issubdtype(x.dtype, mx.floating) and x.dtype != mx.float32
    ]
    if leftovers:
        sys.exit(f"oracle: parameters not cast to float32: {leftovers[:5]}")
    mx.eval(model.parameters())


def float_dtypes(model):
    return sorted(
        {
            str(x.dtype).replace("mlx.core.", "")
            for _, x in tree_flatten(model.parameters())
            if mx.issubdtype(x.dtype, mx.floating)
        }
    )


def top_k(logits, k):
    # logits: 1-D float32 array over the vocabulary.
    order = mx.argsort(-logits)[:k]
    ids = order.tolist()
    values = logits[order].tolist()
    # JSON has no NaN/inf: report them as null.
    return [[int(i), float(v) if math.isfinite(v) else None] for i, v in zip(ids, values)]


def main():
    args = parse_args()
    model, tokenizer = load(args.model_dir)
    stored_dtypes = float_dtypes(model)
    if args.dtype == "float32":
        cast_to_float32(model)

    rendered, ids = prompt_ids(tokenizer, args.prompt, args.chat)
    cache = make_prompt_cache(model)
    inputs = mx.array(ids)[None]
    steps = []
    generated = []
    for _ in range(args.max_tokens):
        logits = model(inputs, cache=cache)[0, -1].astype(mx.float32)
        mx.eval(logits)
        # Greedy: the first index of the maximum, as mx.argmax picks it.
        token = int(mx.argmax(logits).item())
        steps.append({"id": token, "top": top_k(logits, args.top)})
        generated.append(token)
        inputs = mx.array([[token]])

    out = {
        "prompt_ids": [int(i) for i in ids],
        "generated_ids": generated,
        "steps": steps,
        # Like an answer shown to a user: special tokens (EOS, turn markers) left out.
        "text": tokenizer.decode(generated, skip_special_tokens=True),
        "text_with_special_tokens": tokenizer.decode(generated),
        "rendered_prompt": rendered,
        "dtype": args.dtype,
        "stored_float_dtypes": stored_dtypes,
        "compute_float_dtypes": float_dtypes(model),
    }
    json.dump(out, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
