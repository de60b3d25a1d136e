#!/usr/bin/env bash
# 1 vs 2 tensor-parallel ranks (ring backend over loopback) on one machine:
#   scripts/bench_dist.sh BINARY MODEL_DIR [TOKENS]
# Prints prefill and decode tokens/s of `generate` (greedy, --ignore-eos) for both.
set -euo pipefail
bin=$1 model=$2 n=${3:-64}
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
ports=$(python3 -c 'import socket
ps=[]
for _ in range(2):
    s=socket.socket(); s.bind(("127.0.0.1",0)); ps.append(s.getsockname()[1]); s.close()
print(" ".join(map(str,ps)))')
set -- $ports
echo "[[\"127.0.0.1:$1\"],[\"127.0.0.1:$2\"]]" >"$dir/hosts.json"
prompt="Write a long story about a lighthouse keeper who finds a map."
run() {
  "$bin" rmlx generate "$model" --prompt "$prompt" --chat -n "$n" --ignore-eos \
    --message-format json "$@" | python3 -c '
import json, sys
m = [json.loads(l) for l in sys.stdin if l.strip()][-1]
t = m["timing"]; p = len(m["prompt_ids"]); g = len(m["generated_ids"])
pre = p / t["prefill_s"]; dec = (g - 1) / t["decode_s"]
print("prefill %.1f tok/s (%d tokens), decode %.1f tok/s (%d tokens)" % (pre, p, dec, g))'
}
echo "1 process:  $(run)"
echo "2 ranks:    $(run --hostfile "$dir/hosts.json")"
