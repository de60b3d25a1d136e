#!/usr/bin/env bash
# One-off device experiment (round 14; run in round 15, BENCHMARKS "GPU, round 15"): does MLX's CUDA backend re-instantiate its graphs every
# decode step (below 256 keys: vector attention kernel; from 256 on: cuDNN)? After `setup`.
set -uo pipefail
B="bash scripts/cuda-bench.sh"
M=${M:-s135}
PY=$(command -v python3)
export PYTHONPATH=/root/site
summ() { # dir: type counts + structural signature per graph file (last 24)
  for f in $(ls "$1"/*.dot 2>/dev/null | sort -t_ -k2 -n | tail -24); do
    # MLX labels each node with its kernel's mangled name: the sequence of names is the graph.
    sig=$(grep -oE '_Z[A-Za-z0-9_]+' "$f" | tr '\n' ' ')
    echo "$(basename $f) $(echo "$sig" | wc -w) kernels sig=$(echo "$sig" | md5sum | cut -c1-8)"
  done
}
run() { # VAR=VALUE then bench args
  local v=$1; shift
  env "$v" RUST_LOG=rmlx_model::engine::sequence=debug $B bench-rmlx $M --decode-tokens 256 --repeat 1 --no-probe-timing "$@" 2>&1 | grep -E 'decode: 2[0-9]{2} steps|^rmlx |error' | tr '\n' ' '; echo; }
for p in 16 512; do for v in X=1 MLX_CUDA_GRAPH_CACHE_SIZE=0 MLX_CUDA_USE_CUDNN_SDPA=0 X=1; do echo "-- p$p $v"; run $v --prompt-tokens $p; done; done
for p in 16 300; do
  mkdir -p /root/g/r$p; echo "== rmlx dumps p$p"
  MLX_SAVE_CUDA_GRAPHS_DOT_FILE=/root/g/r$p/g $B bench-rmlx $M --prompt-tokens $p --decode-tokens 8 --repeat 1 --no-probe-timing >/dev/null 2>&1
  ls /root/g/r$p | wc -l; summ /root/g/r$p
  n=$(ls /root/g/r$p | wc -l); for i in $((n-1)) $n; do cp /root/g/r$p/g_$i.dot $OUT/r${p}_$i.dot 2>/dev/null; done
done
