# Shared helpers for the scripts in this directory (sourced, not run).
# shellcheck shell=bash

# Repository root (the parent of scripts/).
RMLX_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RMLX_REPO

# Print a message to stderr, prefixed with the script name.
rmlx_log() {
    printf '%s: %s\n' "$(basename "$0")" "$*" >&2
}

rmlx_die() {
    rmlx_log "error: $*"
    exit 1
}

# Run a command with its output captured; print the output only if it fails.
rmlx_quiet() {
    local log status
    log="$(mktemp)"
    if "$@" >"$log" 2>&1; then
        rm -f "$log"
        return 0
    else
        status=$?
    fi
    cat "$log" >&2
    rm -f "$log"
    rmlx_log "command failed (exit $status): $*"
    return "$status"
}

# The Python used for pip operations outside the oracle venv.
export RMLX_PYTHON="${PYTHON:-python3}"
