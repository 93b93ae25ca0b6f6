#!/usr/bin/env bash
# Starts a Pleiades node on loopback and talks to it through the CLI over QUIC/PWP, then stops it
# with SIGTERM. Usage: scripts/demo.sh [data-dir]  (default: a fresh temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR
CARGO_TARGET_DIR=$(scripts/setup.sh | tail -n 1)

# The same package selection as scripts/test.sh, so both share one compiled RocksDB.
cargo build --locked --workspace --all-targets
pleiades="$CARGO_TARGET_DIR/debug/pleiades"
data_dir=${1:-$(mktemp -d -t pleiades-demo.XXXXXX)}
listen=127.0.0.1:7400
http=127.0.0.1:7480

"$pleiades" node --data-dir "$data_dir" --listen "$listen" --http "$http" &
node_pid=$!
trap 'kill -TERM $node_pid 2>/dev/null || true; wait $node_pid 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://$http/readyz" >/dev/null 2>&1 && break
  kill -0 $node_pid 2>/dev/null || { echo "demo: the node exited"; exit 1; }
  sleep 0.1
done

export PLEIADES_ADDR=$listen PLEIADES_CA_CERT="$data_dir/tls/ca.crt"
run() { echo; echo "\$ pleiades $*"; "$pleiades" "$@"; }
run info
run health
run kv put greeting "hello, constellation"
run kv put greeting "hello again"
run kv get greeting
run kv get greeting --version 1
run kv versions greeting
run kv describe greeting
run kv put planet "Maia"
run kv scan
run ping --count 200
echo
echo "\$ curl http://$http/metrics | grep pleiades_pwp_frames"
curl -fsS "http://$http/metrics" | grep '^pleiades_pwp_frames' | head -5
echo
echo "demo: stopping the node (SIGTERM); data kept in $data_dir"
