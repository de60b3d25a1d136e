#!/usr/bin/env bash
# Creates (once) the Python venv that renders chat templates with jinja2 exactly as Hugging
# Face transformers does (scripts/render_jinja2.py, the reference of the template
# conformance test), at ${RMLX_JINJA_VENV:-<repo>/target/jinja-venv}. Prints the venv's
# python path on the last line.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# transformers requires jinja2>=3.1.0; this is the current release.
REQUIREMENTS=("jinja2==3.1.6" "MarkupSafe==3.0.3")

venv="${RMLX_JINJA_VENV:-$RMLX_REPO/target/jinja-venv}"
rmlx_venv "$venv" "${REQUIREMENTS[*]}" 'import jinja2, jinja2.sandbox' "${REQUIREMENTS[@]}"

printf '%s\n' "$venv/bin/python"
