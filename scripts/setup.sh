#!/usr/bin/env bash
# Installs everything cargo-rmlx needs on a fresh Debian 12 machine: build tools and
# OpenBLAS (apt), the MLX shared library (the `mlx-cpu` wheel, into the per-user data
# directory the mlx-sys build script reads and installed binaries load it from), and the test
# models. Idempotent and quiet on success.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MLX_WHEEL=mlx-cpu

# --- Debian packages -------------------------------------------------------------------
apt_packages=(cmake clang libclang-dev libopenblas0-pthread)
# scripts/llama-venv.sh compiles llama.cpp from llama-cpp-python's sdist with cmake and g++.
apt_packages+=(g++)
command -v "$RMLX_PYTHON" >/dev/null 2>&1 || apt_packages+=(python3)
"$RMLX_PYTHON" -m pip --version >/dev/null 2>&1 || apt_packages+=(python3-pip)
# The oracle venv (scripts/oracle-venv.sh) needs venv + ensurepip.
"$RMLX_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_packages+=(python3-venv)

missing=()
for pkg in "${apt_packages[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} > 0)); then
    sudo=()
    [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    rmlx_quiet "${sudo[@]}" apt-get update
    rmlx_quiet "${sudo[@]}" apt-get install -y "${missing[@]}"
fi

# --- Rust components used by scripts/test.sh --------------------------------------------
if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
            rmlx_quiet rustup component add "$component"
        fi
    done
fi

# --- MLX shared library (same location and layout as mlx-sys/build.rs) -------------------
# A data directory, not a cache: installed binaries load libmlx from here (README, Platforms).
data_dir="${RMLX_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/rmlx}"
dest="$data_dir/$MLX_WHEEL-$MLX_VERSION"
if [[ ! -d "$dest/mlx/lib" ]]; then
    mkdir -p "$data_dir"
    tmp="$data_dir/.$MLX_WHEEL-$MLX_VERSION.partial-$$"
    rm -rf "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    rmlx_quiet "$RMLX_PYTHON" -m pip install --quiet --no-deps --disable-pip-version-check \
        --target "$tmp" "$MLX_WHEEL==$MLX_VERSION"
    [[ -d "$tmp/mlx/lib" ]] || rmlx_die "$MLX_WHEEL==$MLX_VERSION installed no mlx/lib directory"
    if [[ -e "$dest" && ! -d "$dest/mlx/lib" ]]; then
        rm -rf "$dest" # a broken leftover
    fi
    # Another process (a concurrent build script) may have won the race; keep its copy.
    mv -T "$tmp" "$dest" 2>/dev/null || rm -rf "$tmp"
    trap - EXIT
fi

# --- Test models -------------------------------------------------------------------------
bash "$RMLX_REPO/scripts/fetch-models.sh"
