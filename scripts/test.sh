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
echo "== cargo deny (licences, bans, sources: deny.toml)"
# Offline: these checks need only Cargo.lock and the fetched crates, no advisory database.
cargo deny --offline --locked check --hide-inclusion-graph bans licenses sources
echo "== cargo test"
# Library, binary and integration tests (there are no doc tests); benches are not tests.
# Output goes to a file that is followed, not through a pipe: a process a failed test left
# behind cannot then hold the pipe open and hang the run; leftovers are killed at the end.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast --lib --bins --tests -- --test-threads 2 >"$log" 2>&1 &
tests=$!
tail -n +1 -f --pid="$tests" "$log"
status=0
wait "$tests" || status=$?
leftovers=$(pgrep -f "^$CARGO_TARGET_DIR/debug/pleiades " || true)
if [ -n "$leftovers" ]; then
    echo "killing $(echo "$leftovers" | wc -l) pleiades processes the tests left running"
    kill -9 $leftovers 2>/dev/null || true
fi
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
