#!/usr/bin/env bash
# The second command of the README, and what CI runs (.ci/run): set the machine up, check
# formatting and lints, run every test (unit, integration and the end-to-end tests on real
# models against the mlx-lm reference). Exits non-zero on any failure.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$RMLX_REPO"

bash scripts/setup.sh
# The reference implementation the end-to-end tests compare against (cached).
bash scripts/oracle-venv.sh >/dev/null
# The llama.cpp reference of the bench smoke test (compiled once, ~10 min on 2 cores; cached).
bash scripts/llama-venv.sh >/dev/null

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The installed-binary test (tests/e2e/install.rs) installs both tools with `cargo install
# --locked --debug` built in target/install-test. Compile that build here, before the tests,
# so it does not run alongside the timed end-to-end tests; the test's own install then only
# copies the binaries.
for package in cargo-rmlx lsp; do
    CARGO_TARGET_DIR=target/install-test cargo install --locked --debug --quiet \
        --path "$package" --root target/install-test/root
done
# cargo test rather than nextest: the end-to-end tests share converted models and
# reference runs within one test process.
cargo test --workspace --quiet
