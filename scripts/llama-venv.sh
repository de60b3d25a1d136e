#!/usr/bin/env bash
# Creates (once) the Python venv of the llama.cpp reference that `cargo rmlx bench
# --compare-llama-cpp` runs (scripts/bench_llama_cpp.py), at
# ${RMLX_LLAMA_VENV:-<repo>/target/llama-venv}: llama-cpp-python compiled from its source
# distribution, so llama.cpp is built for this machine's CPU (-march=native, OpenMP) with
# cmake and the C/C++ compiler from scripts/setup.sh. Takes minutes the first time; a stamp
# makes later runs instant. Prints the venv's python path on the last line.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# pip caches the wheel it builds (keyed by the sdist, not by CMAKE_ARGS), so a fresh checkout on
# the same machine installs in seconds; after changing CMAKE_FLAGS, drop that wheel first:
# `target/llama-venv/bin/python -m pip cache remove llama_cpp_python`.
# Only the llama library: no llava/mtmd (multimodal), tests, examples or tools.
CMAKE_FLAGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"

command -v cmake >/dev/null 2>&1 || rmlx_die "cmake is missing (run scripts/setup.sh)"
command -v c++ >/dev/null 2>&1 || rmlx_die "no C++ compiler (run scripts/setup.sh)"

venv="${RMLX_LLAMA_VENV:-$RMLX_REPO/target/llama-venv}"
want="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION $CMAKE_FLAGS"

CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }$CMAKE_FLAGS" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    rmlx_venv "$venv" "$want" 'import llama_cpp; llama_cpp.llama_backend_init()' \
    --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"

printf '%s\n' "$venv/bin/python"
