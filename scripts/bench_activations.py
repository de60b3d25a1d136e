#!/usr/bin/env python3
"""How far the CPU host kernels' int8 activations move the engine from mlx-lm float32.

    bench_activations.py BINARY MODEL_DIR[:chat|:raw] ...

For each model directory and prompt form (the e2e oracle prompts), runs mlx-lm 0.32.2 in
float32 (scripts/oracle_mlx_lm.py, 16 greedy steps, EOS ignored) and the engine twice,
`RMLX_HOST_ACTIVATIONS=f32` and `=int8`, on the same prompt ids, and prints per run: the
step-0 top-1 logit error against float32 mlx-lm, the largest error over mlx-lm's step-0
top-5 logits, the step-0 top-1/top-2 margin, and how many of the 16 greedy tokens equal
mlx-lm's (up to the first divergence). Run with the oracle venv's python (it runs mlx-lm in
process-free children like the tests do).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

CHAT_PROMPT = "What is the capital of France?"
RAW_PROMPT = "The capital of France is"
STEPS = 16
HERE = Path(__file__).resolve().parent


def reference(model, chat):
    prompt = CHAT_PROMPT if chat else RAW_PROMPT
    args = [sys.executable, str(HERE / "oracle_mlx_lm.py"), model, "--prompt", prompt,
            "--max-tokens", str(STEPS), "--dtype", "float32"]
    if chat:
        args.append("--chat")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ours(binary, model, chat, mode):
    prompt = CHAT_PROMPT if chat else RAW_PROMPT
    args = [binary, "rmlx", "generate", model, "--prompt", prompt, "--max-tokens", str(STEPS),
            "--ignore-eos", "--message-format", "json"]
    if chat:
        args.append("--chat")
    env = dict(os.environ, RMLX_HOST_ACTIVATIONS=mode)
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if "generated_ids" in msg:
            return msg
    raise SystemExit(f"no generation in the output of {args}")


def top(step):
    return {int(i): float(v) for i, v in step["top"]}


def compare(ref, run):
    assert ref["prompt_ids"] == run["prompt_ids"], "prompt ids differ"
    r0, o0 = top(ref["steps"][0]), top(run["steps"][0])
    (best, best_logit), (_, second) = sorted(r0.items(), key=lambda kv: -kv[1])[:2]
    err_top1 = abs(o0.get(best, float("nan")) - best_logit)
    err_top5 = max(abs(o0[i] - v) for i, v in r0.items() if i in o0)
    agree = 0
    for a, b in zip(ref["generated_ids"], run["generated_ids"]):
        if a != b:
            break
        agree += 1
    return err_top1, err_top5, best_logit - second, agree


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    binary = sys.argv[1]
    print("| model | prompt | activations | step-0 top-1 error | step-0 top-5 max error "
          "| mlx-lm step-0 margin | greedy tokens equal (of 16) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for spec in sys.argv[2:]:
        model, _, form = spec.partition(":")
        for chat in ([True, False] if not form else [form == "chat"]):
            ref = reference(model, chat)
            for mode in ["f32", "int8"]:
                e1, e5, margin, agree = compare(ref, ours(binary, model, chat, mode))
                print(f"| {Path(model).name} | {'chat' if chat else 'raw'} | {mode} | {e1:.4f} "
                      f"| {e5:.4f} | {margin:.3f} | {agree} |", flush=True)


if __name__ == "__main__":
    main()
