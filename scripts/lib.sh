# Shared helpers for the scripts in this directory (sourced, not run).
# shellcheck shell=bash

# Repository root (the parent of scripts/).
RMLX_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export RMLX_REPO

# The pinned versions (MLX_VERSION, MLX_LM_VERSION, LLAMA_CPP_PYTHON_VERSION).
# shellcheck source=scripts/versions.env
source "$RMLX_REPO/scripts/versions.env"

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

# rmlx_venv VENV WANT CHECK PIP_ARGS…
# Creates (once) a Python venv at VENV with `pip install PIP_ARGS…`, then runs
# `python -c CHECK` in it. WANT (a version list or a hash of the requirements) is recorded in
# a stamp file: while it matches, a later call returns at once; when it changes, the venv is
# made again from scratch. Concurrent callers (parallel tests) serialize on VENV.lock.
rmlx_venv() {
    local venv="$1" want="$2" check="$3"
    shift 3
    local stamp="$venv/.rmlx-venv-stamp"
    _rmlx_venv_ready() {
        [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]
    }
    _rmlx_venv_ready && return 0
    mkdir -p "$(dirname "$venv")"
    local lock_fd
    exec {lock_fd}>"$venv.lock"
    flock "$lock_fd"
    # Re-check once we hold the lock: another caller may have made it meanwhile.
    local status=0
    if ! _rmlx_venv_ready; then
        rm -rf "$venv"
        if rmlx_quiet "$RMLX_PYTHON" -m venv "$venv" &&
            rmlx_quiet "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
                --no-input "$@" &&
            rmlx_quiet "$venv/bin/python" -c "$check"; then
            printf '%s\n' "$want" >"$stamp"
        else
            status=$?
        fi
    fi
    exec {lock_fd}>&-
    return "$status"
}
