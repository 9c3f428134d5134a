#!/usr/bin/env bash
# The test command of the README and of CI: formatting, lints, then every test in release mode
# (the real-row and generated-data tests want optimised code). Ends with one total line.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cartflow-target}"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --workspace --all-targets --locked 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
