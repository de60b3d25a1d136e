#!/usr/bin/env bash
# Device side of the CUDA benchmark (rmlx vs Python mlx-lm on an NVIDIA GPU, MLX's CUDA build).
# Run from the repo root on the GPU machine; scripts/cuda-stage.sh makes the chunks it reads.
#   scripts/cuda-bench.sh add           append the carried chunks (cuda-carry/*/) to $STAGE
#   scripts/cuda-bench.sh setup         verify+unpack A (binary, wheels, smollm2), install wheels
#   scripts/cuda-bench.sh unpack-b      verify+unpack B (qwen-q4g64)
#   scripts/cuda-bench.sh check         print device / library / import checks
#   scripts/cuda-bench.sh bench NAME [bench args]   run `cargo-rmlx rmlx bench` on $ROOT/models/NAME
#   scripts/cuda-bench.sh bench-rmlx NAME [bench args]   the same without --compare-mlx-lm
#   scripts/cuda-bench.sh synthetic SHAPE NAME [args]  make $ROOT/models/NAME with
#                       scripts/synthetic_model.py (random weights of SHAPE's layout, made here:
#                       nothing large travels; tokenizer from $ROOT/models/tokenizer)
#   scripts/cuda-bench.sh mlx-lm-benchmark NAME [args]  `python -m mlx_lm benchmark` on it
#   scripts/cuda-bench.sh mlx-lm-graph NAME OUT_PREFIX [args]  primitives of one mlx-lm decode
#                       step (scripts/mlx_lm_graph.py; rmlx's own: RMLX_GRAPH_DOT=prefix)
#   scripts/cuda-bench.sh serve-bench NAME [args]  scripts/bench_serve.py: `cargo-rmlx rmlx serve`
#                       next to `mlx_lm server` on $ROOT/models/NAME (e.g. --concurrency 1,16)
# Env is set the same way for every subcommand (see below); nothing is downloaded.
# Sequence used (one device call each, carrying one chunk, issued back to back so the machine stays warm):
#   a-00, a-01: add | a-02: add && setup && check && bench smollm2-q4 --prompt-tokens 16 --decode-tokens 8 --repeat 1
#   b-00: add && bench smollm2-q4 --prompt-tokens 128,512,2048 --decode-tokens 128 --repeat 3 --message-format json
#   b-01..b-03: add | b-04: add && unpack-b && bench qwen-q4g64 ... (one call per prompt length)
set -euo pipefail
STAGE=${STAGE:-/root/stage}   # where chunks accumulate between calls (while the machine is warm)
ROOT=${ROOT:-/root/rmlx}      # unpacked binary + models
SITE=${SITE:-/root/site}      # pip --target for mlx, mlx-cuda-13, mlx-lm
PY=${PY:-$(command -v python3)}
mkdir -p "$STAGE" "$ROOT"

# mlx-cuda-13's libmlx.so finds CUDA libs through RUNPATH $ORIGIN/../../nvidia/...: point
# $SITE/nvidia at the image's nvidia-* wheels, and also list them in LD_LIBRARY_PATH.
NV=$("$PY" -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
[ -n "$NV" ] && [ ! -e "$SITE/nvidia" ] && mkdir -p "$SITE" && ln -s "$NV" "$SITE/nvidia"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
# $SITE/mlx/lib first: our binary (RUNPATH = the CPU wheel's dir, absent here) then loads the CUDA libmlx.so.
export LD_LIBRARY_PATH=$SITE/mlx/lib$(for d in "$NV"/*/lib; do printf ':%s' "$d"; done)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# NVRTC (MLX's JIT kernels) needs the CUDA headers.
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then export CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); fi

# The binary looks for scripts/bench_mlx_lm.py under the repo path it was built in
# (env!("CARGO_MANIFEST_DIR")/..); make that path lead to this checkout.
BUILT_IN=${BUILT_IN:-/work/main}
[ -e "$BUILT_IN/scripts/bench_mlx_lm.py" ] || { mkdir -p "$(dirname "$BUILT_IN")"; ln -sfn "$PWD" "$BUILT_IN"; }

verify_unpack() { # $1 = A or B
  ( cd "$STAGE" && cat $1.part.* > $1.tar.zst && sha256sum -c $1.sha256 )
  # the image has libzstd but no zstd CLI: cuda-stage.sh carries one (copied into $STAGE)
  "$(command -v zstd || echo "$STAGE/zstd")" -dc "$STAGE/$1.tar.zst" | tar -C "$ROOT" -xf - && rm -f "$STAGE/$1.tar.zst"
}

case "${1:-}" in
add)
  for d in cuda-carry/*/; do cp -v "$d"* "$STAGE"/; done; ls -la "$STAGE" ;;
setup)
  verify_unpack A
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$ROOT"/whl/*.whl
  # pip --target may replace the link made above.
  [ -e "$SITE/nvidia" ] || ln -s "$NV" "$SITE/nvidia" ;;
unpack-b)
  verify_unpack B ;;
check)
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  echo "CUDA_HOME=${CUDA_HOME:-}"; sha256sum "$ROOT/cargo-rmlx"
  ldd "$ROOT/cargo-rmlx" | grep -E 'mlx|not found|cud|blas' || true
  "$PY" -c 'import mlx.core as mx, mlx_lm; print(mx.__version__, mx.default_device()); a=mx.ones((4,4)); print((a@a).sum())' ;;
bench)
  name=$2; shift 2
  exec "$ROOT/cargo-rmlx" rmlx bench "$ROOT/models/$name" --compare-mlx-lm --python "$PY" "$@" ;;
synthetic)
  shape=$2 name=$3; shift 3
  "$PY" scripts/synthetic_model.py make "$shape" "$ROOT/models/$name" --tokenizer "$ROOT/models/tokenizer" "$@" ;;
mlx-lm-benchmark)
  name=$2; shift 2
  exec "$PY" -m mlx_lm benchmark --model "$ROOT/models/$name" "$@" ;;
mlx-lm-graph)
  name=$2; shift 2
  exec "$PY" scripts/mlx_lm_graph.py "$ROOT/models/$name" "$@" ;;
serve-bench)
  name=$2; shift 2
  exec "$PY" scripts/bench_serve.py --model "$ROOT/models/$name" --rmlx-bin "$ROOT/cargo-rmlx" \
    --mlx-lm-python "$PY" "$@" ;;
bench-rmlx)  # our engine alone (e.g. a second dtype), no mlx-lm runs
  name=$2; shift 2
  exec "$ROOT/cargo-rmlx" rmlx bench "$ROOT/models/$name" "$@" ;;
*) sed -n 2,18p "$0"; exit 2 ;;
esac
