#!/usr/bin/env bash
# The Neovim end-to-end test of rmlx-lsp: a real editor client (Debian's `neovim`, headless)
# attached to the language server, reading back the diagnostics it received.
#
#   scripts/neovim-lsp-test.sh                 install neovim if needed, then run the test
#                                              (cargo test -p rmlx-lsp --test e2e neovim)
#   scripts/neovim-lsp-test.sh --install-only  install neovim if needed; print nvim's path
#
# Installs with apt-get (as root, or through sudo); skipped when `nvim` is already on PATH.
# The test itself (lsp/tests/e2e/neovim.rs) calls this script with --install-only and fails,
# never skips, when Neovim cannot be had.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

install_only=0
for arg in "$@"; do
    case "$arg" in
        --install-only) install_only=1 ;;
        -h | --help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) rmlx_die "unknown argument: $arg" ;;
    esac
done

if ! command -v nvim >/dev/null 2>&1; then
    sudo=()
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || rmlx_die "neovim is not installed and there is no root or sudo to install it"
        sudo=(sudo)
    fi
    # One installer at a time (test processes may call this concurrently).
    exec 8>"${TMPDIR:-/tmp}/rmlx-neovim-install.lock"
    flock 8
    if ! command -v nvim >/dev/null 2>&1; then
        rmlx_log "installing neovim (apt-get)"
        rmlx_quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
        rmlx_quiet "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends neovim
    fi
    command -v nvim >/dev/null 2>&1 || rmlx_die "apt-get installed neovim but nvim is not on PATH"
fi

if [[ "$install_only" == 1 ]]; then
    command -v nvim
    exit 0
fi

cd "$RMLX_REPO"
exec cargo test -p rmlx-lsp --test e2e neovim -- --nocapture
