#!/usr/bin/env bash
# Build-time benchmark (BENCHMARKS.md, "Build"): `cargo rmlx build` next to `mlx_lm convert`
# on the same dense bf16 source directory, in the same run, for each test model and
# quantization mode; wall time and peak RSS (GNU time's %M) of each process. Also times
# `cargo rmlx build` straight from the GGUF (mlx-lm cannot read GGUF).
#
#   scripts/bench-build.sh [MODEL...]     MODEL: smollm2 qwen2.5-coder-0.5b gemma3-270m
#                                         (default: all three; `fetch-models.sh --all` first)
#
# Uses the release binary (built here with `cargo build --release`) and the reference venv
# (scripts/oracle-venv.sh). Work files go to target/bench-build/. Prints a Markdown table.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RMLX_REPO"

models=("$@")
((${#models[@]})) || models=(smollm2 qwen2.5-coder-0.5b gemma3-270m)

gguf_of() {
    case "$1" in
        smollm2) echo target/test-models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ;;
        qwen2.5-coder-0.5b) echo target/test-models/qwen2.5-coder-0.5b/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf ;;
        gemma3-270m) echo target/test-models/gemma3-270m/gemma-3-270m-Q4_K_M.gguf ;;
        *) rmlx_die "unknown model $1" ;;
    esac
}

[[ -x /usr/bin/time ]] || rmlx_die "needs GNU time (/usr/bin/time; apt-get install time)"
rmlx_quiet cargo build --release
bin="$RMLX_REPO/target/release/cargo-rmlx"
python="$(bash scripts/oracle-venv.sh | tail -n 1)"
work="$RMLX_REPO/target/bench-build"
mkdir -p "$work"

# measure OUT_VAR CMD...: runs CMD, stores "seconds peak-MiB" in OUT_VAR.
measure() {
    local __out="$1" stats
    shift
    stats="$(mktemp)"
    if ! /usr/bin/time -f '%e %M' -o "$stats" "$@" >"$work/last.log" 2>&1; then
        cat "$work/last.log" >&2
        rmlx_die "failed: $*"
    fi
    read -r secs kib <"$stats"
    rm -f "$stats"
    printf -v "$__out" '%s %d' "$secs" "$((kib / 1024))"
}

echo "| model | settings | cargo rmlx build (s) | peak RSS (MiB) | mlx_lm convert (s) | peak RSS (MiB) | identical tensors |"
echo "|---|---|---|---|---|---|---|"
for model in "${models[@]}"; do
    gguf="$RMLX_REPO/$(gguf_of "$model")"
    [[ -f "$gguf" ]] || rmlx_die "$gguf is missing (scripts/fetch-models.sh --all)"
    src="$work/$model-bf16"
    if [[ ! -f "$src/config.json" ]]; then
        rmlx_quiet "$bin" rmlx convert "$gguf" --out "$src" --force
    fi
    for mode in affine mxfp4 gguf; do
        ws="$work/ws-$model-$mode"
        rm -rf "$ws"
        mkdir -p "$ws"
        printf '[workspace]\n' >"$ws/Cargo.toml"
        case "$mode" in
            affine) q='{ mode = "affine", bits = 4, group-size = 64 }'; args=(-q); source="$src" ;;
            mxfp4) q='{ mode = "mxfp4" }'; args=(-q --q-mode mxfp4); source="$src" ;;
            gguf) q='{ mode = "affine", bits = 4, group-size = 64 }'; source="$gguf" ;;
        esac
        printf '[models.m]\nsource = "%s"\nquantize = %s\n' "$source" "$q" >"$ws/rmlx.toml"
        measure ours "$bin" rmlx build --quiet --manifest-path "$ws/rmlx.toml"
        if [[ "$mode" == gguf ]]; then
            read -r s m <<<"$ours"
            echo "| $model | from the GGUF, affine 4-bit g64 | $s | $m | — | — | — |"
            continue
        fi
        out="$ws/mlx-lm"
        measure theirs "$python" -m mlx_lm convert --hf-path "$src" --mlx-path "$out" "${args[@]}"
        same="$("$python" - "$ws/target/rmlx/m" "$out" <<'PY'
import sys, glob, mlx.core as mx, numpy as np
def load(d):
    t = {}
    for f in sorted(glob.glob(d + "/*.safetensors")):
        t.update(mx.load(f))
    return t
a, b = load(sys.argv[1]), load(sys.argv[2])
same = set(a) == set(b) and all(
    a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
    and np.array_equal(np.array(a[k].view(mx.uint8)), np.array(b[k].view(mx.uint8)))
    for k in a)
print(f"{'yes' if same else 'NO'} ({len(a)})")
PY
)"
        read -r s1 m1 <<<"$ours"
        read -r s2 m2 <<<"$theirs"
        echo "| $model | ${q//|/\\|} | $s1 | $m1 | $s2 | $m2 | $same |"
    done
done
