#!/usr/bin/env bash
# Creates (once) the venv with the official `openai` Python package that the server's
# compatibility test drives, at ${RMLX_OPENAI_VENV:-<repo>/target/openai-venv}, from the
# pinned list next to this script. Prints the venv's python path on the last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$here/../../scripts/lib.sh"

venv="${RMLX_OPENAI_VENV:-$RMLX_REPO/target/openai-venv}"
requirements="$here/openai-requirements.txt"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
rmlx_venv "$venv" "$want" 'import openai' -r "$requirements"

printf '%s\n' "$venv/bin/python"
