#!/usr/bin/env bash
# Starts a local 3-node constellation with `pleiades up` on loopback, runs a short demo against
# it through the CLI (writes, reads, a compare-and-swap, a scan across ranges, the status table,
# a leader killed and replaced, a short benchmark), then stops it with SIGTERM.
# Usage: scripts/demo.sh [data-dir]  (default: a fresh temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR
CARGO_TARGET_DIR=$(scripts/setup.sh | tail -n 1)

# The same package selection as scripts/test.sh, so both share one compiled RocksDB.
cargo build --locked --workspace --all-targets
pleiades="$CARGO_TARGET_DIR/debug/pleiades"
data_dir=${1:-$(mktemp -d -t pleiades-demo.XXXXXX)}
base_port=7400

"$pleiades" up --nodes 3 --data-dir "$data_dir" --base-port $base_port &
up_pid=$!
trap 'kill -TERM $up_pid 2>/dev/null || true; wait $up_pid 2>/dev/null || true' EXIT

for node in 1 2 3; do
  for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$((base_port + 80 + node))/readyz" >/dev/null 2>&1 && break
    kill -0 $up_pid 2>/dev/null || { echo "demo: pleiades up exited"; exit 1; }
    sleep 0.1
  done
done

export PLEIADES_ADDR=127.0.0.1:$((base_port + 1)) PLEIADES_CA_CERT="$data_dir/tls/ca.crt"
run() { echo; echo "\$ pleiades $*"; "$pleiades" "$@"; }
run kv put greeting "hello, constellation"
run kv put greeting "hello again"
run kv get greeting
run kv get greeting --version 1
run kv get greeting --stale
run kv cas greeting "hello, CAS" --expect "hello again"
run kv versions greeting
for planet in Alcyone Atlas Electra Maia Merope Taygeta Pleione Celaeno Sterope; do
  "$pleiades" kv put "star/$planet" "$planet" >/dev/null
done
run kv scan star/ star0
run status
leader=$("$pleiades" status --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(r["node_id"] for r in d["replicas"] if r["role"]=="leader" and not r["meta"]))')
echo
echo "demo: killing node $leader (kill -9), a range leader; the others elect new leaders"
pkill -9 -f "$data_dir/node-$leader/pleiades.toml" || true
sleep 3
export PLEIADES_ADDR=127.0.0.1:$((base_port + (leader % 3) + 1))
run kv get greeting
run kv put after-failover "still writable"
run bench --workload write --concurrency 16 --duration 3 --keys 1000
echo
echo "\$ curl http://127.0.0.1:$((base_port + 81))/metrics | grep pleiades_raft_proposals"
curl -fsS "http://127.0.0.1:$((base_port + 81))/metrics" | grep '^pleiades_raft_proposals' | head -5 || true
echo
echo "demo: stopping the constellation (SIGTERM); data kept in $data_dir"
