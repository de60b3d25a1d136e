#!/usr/bin/env bash
# Creates (once) the Python venv that runs the reference implementation, mlx-lm on MLX's
# CPU backend, at ${RMLX_ORACLE_VENV:-<repo>/target/oracle-venv}, from the pinned list in
# scripts/oracle-requirements.txt. Prints the venv's python path on the last line.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

venv="${RMLX_ORACLE_VENV:-$RMLX_REPO/target/oracle-venv}"
requirements="$RMLX_REPO/scripts/oracle-requirements.txt"
stamp="$venv/.rmlx-oracle-stamp"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

ready() {
    [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]
}

if ! ready; then
    mkdir -p "$(dirname "$venv")"
    # Serialize concurrent callers (parallel tests); re-check once we hold the lock.
    exec 9>"$venv.lock"
    flock 9
    if ! ready; then
        rm -rf "$venv"
        rmlx_quiet "$RMLX_PYTHON" -m venv "$venv"
        rmlx_quiet "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            --no-input -r "$requirements"
        rmlx_quiet "$venv/bin/python" -c 'import mlx.core, mlx_lm, transformers'
        printf '%s\n' "$want" >"$stamp"
    fi
    exec 9>&-
fi

printf '%s\n' "$venv/bin/python"
