#!/usr/bin/env bash
# The test command of the README and of CI: formatting, lints, then every test in release mode
# (the real-row and generated-data tests want optimised code).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cartflow-target}"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo test --release --workspace --locked
