#!/usr/bin/env bash
# Extracts (once) llama.cpp's `gguf-py` library, vendored in the llama-cpp-python source
# distribution that scripts/llama-venv.sh builds, to ${RMLX_GGUF_PY:-<repo>/target/gguf-py}:
# pure Python + numpy, what scripts/tiny_gguf.py writes the tiny models' GGUF files with
# (llama.cpp's converter itself needs torch). The sdist is fetched with the llama venv's pip
# (its cache makes later fetches local). Prints the library's directory on the last line.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dest="${RMLX_GGUF_PY:-$RMLX_REPO/target/gguf-py}"
stamp="$dest/.rmlx-stamp"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$LLAMA_CPP_PYTHON_VERSION" ]]; then
    printf '%s\n' "$dest/gguf-py"
    exit 0
fi
python="$(bash "$RMLX_REPO/scripts/llama-venv.sh" | tail -n 1)"
mkdir -p "$(dirname "$dest")"
exec {lock_fd}>"$dest.lock"
flock "$lock_fd"
if ! [[ -f "$stamp" && "$(cat "$stamp")" == "$LLAMA_CPP_PYTHON_VERSION" ]]; then
    tmp="$(mktemp -d "$dest.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    rmlx_quiet "$python" -m pip download --quiet --disable-pip-version-check --no-input \
        --no-binary :all: --no-deps -d "$tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" ||
        rmlx_die "cannot fetch the llama-cpp-python $LLAMA_CPP_PYTHON_VERSION source distribution"
    top="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
    tar -xzf "$tmp/$top.tar.gz" -C "$tmp" "$top/vendor/llama.cpp/gguf-py"
    rm -rf "$dest"
    mkdir -p "$dest"
    mv "$tmp/$top/vendor/llama.cpp/gguf-py" "$dest/gguf-py"
    printf '%s\n' "$LLAMA_CPP_PYTHON_VERSION" >"$stamp"
fi
printf '%s\n' "$dest/gguf-py"
