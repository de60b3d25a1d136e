#!/usr/bin/env bash
# Creates (once) the venv with the official `openai` Python package that the server's
# compatibility test drives, at ${RMLX_OPENAI_VENV:-<repo>/target/openai-venv}, from the
# pinned list next to this script. Prints the venv's python path on the last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${RMLX_OPENAI_VENV:-$repo/target/openai-venv}"
requirements="$here/openai-requirements.txt"
stamp="$venv/.rmlx-openai-stamp"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
python="${PYTHON:-python3}"

ready() {
    [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]
}

if ! ready; then
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
    if ! ready; then
        rm -rf "$venv"
        "$python" -m venv "$venv" >&2
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            -r "$requirements" >&2
        "$venv/bin/python" -c 'import openai' >&2
        printf '%s\n' "$want" >"$stamp"
    fi
    exec 9>&-
fi

printf '%s\n' "$venv/bin/python"
