#!/usr/bin/env bash
# Creates (once) the Python venv that runs the reference implementation, mlx-lm on MLX's
# CPU backend, at ${RMLX_ORACLE_VENV:-<repo>/target/oracle-venv}, from the pinned list in
# scripts/oracle-requirements.txt. Prints the venv's python path on the last line.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

venv="${RMLX_ORACLE_VENV:-$RMLX_REPO/target/oracle-venv}"
requirements="$RMLX_REPO/scripts/oracle-requirements.txt"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
rmlx_venv "$venv" "$want" 'import mlx.core, mlx_lm, transformers' -r "$requirements"

printf '%s\n' "$venv/bin/python"
