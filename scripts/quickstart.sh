#!/usr/bin/env bash
# The first command of the README: set the machine up, build cargo-rmlx, import the
# SmolLM2-135M-Instruct test model (4-bit, kept quantized) and ask it a question.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RMLX_REPO"

bash scripts/setup.sh
cargo build --release --quiet

models="${RMLX_TEST_MODELS:-$RMLX_REPO/target/test-models}"
model_dir=target/rmlx-models/smollm2-q4
if [[ ! -f "$model_dir/config.json" ]]; then
    rm -rf "$model_dir"
    mkdir -p "$(dirname "$model_dir")"
    target/release/cargo-rmlx rmlx convert "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
        --out "$model_dir" --keep-quantized
fi

target/release/cargo-rmlx rmlx generate "$model_dir" --chat \
    --prompt "What is the capital of France?" --max-tokens 24
