#!/usr/bin/env bash
# Runs every check and test: formatting, clippy (warnings are errors), unit, property and
# integration tests (real RocksDB on disk, real QUIC on loopback, real node processes).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR
CARGO_TARGET_DIR=$(scripts/setup.sh | tail -n 1)
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked -- --test-threads 2
