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

# On a CPU with AMX, -march=native turns on llama.cpp's AMX kernels, and they crash here
# (SIGSEGV in ggml_backend_amx_mul_mat, seen on a 2-core VM whose CPU reports amx_int8): build
# for the CPU's other vector features instead, named one by one, AMX off. The wheel is then
# built without pip's cache, which would hand back a wheel built with other flags.
pip_cache=()
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
if [[ "$cpu_flags" == *" amx_int8 "* ]]; then
    CMAKE_FLAGS+=" -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    for pair in avx:AVX avx2:AVX2 bmi2:BMI2 fma:FMA f16c:F16C avx_vnni:AVX_VNNI avx512f:AVX512 \
        avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
        on=OFF
        [[ "$cpu_flags" == *" ${pair%%:*} "* ]] && on=ON
        CMAKE_FLAGS+=" -DGGML_${pair#*:}=$on"
    done
    pip_cache=(--no-cache-dir)
fi

command -v cmake >/dev/null 2>&1 || rmlx_die "cmake is missing (run scripts/setup.sh)"
command -v c++ >/dev/null 2>&1 || rmlx_die "no C++ compiler (run scripts/setup.sh)"

venv="${RMLX_LLAMA_VENV:-$RMLX_REPO/target/llama-venv}"
want="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION $CMAKE_FLAGS"

CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }$CMAKE_FLAGS" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    rmlx_venv "$venv" "$want" 'import llama_cpp; llama_cpp.llama_backend_init()' \
    "${pip_cache[@]}" --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"

printf '%s\n' "$venv/bin/python"
