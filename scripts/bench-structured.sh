#!/usr/bin/env bash
# Decode speed with and without a JSON-schema constraint (BENCHMARKS.md, "Structured
# output"): the same chat prompt, 128 greedy tokens, RUNS alternating runs of each; prints
# every run's decode tokens/s and mask time per token, then the medians.
#
# usage: scripts/bench-structured.sh MODEL_DIR [RUNS] [BINARY]
set -euo pipefail
model="$1"
runs="${2:-5}"
bin="${3:-target/release/cargo-rmlx}"
schema="$(mktemp --suffix .json)"
trap 'rm -f "$schema"' EXIT
# An array of at least 64 short strings: it cannot be complete before 128 tokens, so both
# runs decode the same number of steps.
cat >"$schema" <<'JSON'
{"type": "object", "required": ["notes"], "additionalProperties": false,
 "properties": {"notes": {"type": "array", "minItems": 64,
                          "items": {"type": "string", "maxLength": 24}}}}
JSON
prompt="List notes about Paris as JSON."
run() {
    "$bin" rmlx generate "$model" --chat -p "$prompt" -n 128 --ignore-eos "$@" 2>&1 >/dev/null |
        awk '/^Generation:/ {tps=$4} /^Constraint:/ {mask=$2} END {printf "%s %s\n", tps, (mask == "" ? "-" : mask)}'
}
free=() guided=() masks=()
for i in $(seq "$runs"); do
    read -r tps _ < <(run)
    free+=("$tps")
    read -r tps mask < <(run --json-schema "$schema")
    guided+=("$tps")
    masks+=("$mask")
    echo "run $i: unconstrained ${free[-1]} tok/s, json-schema ${guided[-1]} tok/s, mask $mask us/token"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median: unconstrained $(median "${free[@]}") tok/s, json-schema $(median "${guided[@]}") tok/s, mask $(median "${masks[@]}") us/token"
