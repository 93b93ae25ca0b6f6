#!/usr/bin/env bash
# RSS of each node of a local constellation after loading 1M keys of 256 B, then writes and
# linearizable reads at concurrency 64 and the RSS after them (how the allocator was chosen).
# usage: memory.sh BINARY NAME
set -u
bin=$1; name=$2
mkdir -p /tmp/bench && cd /tmp/bench && rm -rf a-$name && mkdir a-$name
$bin up --data-dir a-$name/c --base-port 7700 --log-level warn > a-$name/up.log 2>&1 &
up=$!
for i in $(seq 1 60); do grep -q "is up" a-$name/up.log && break; sleep 0.5; done
b() { $bin bench --addr 127.0.0.1:7701 --ca-cert a-$name/c/tls/ca.crt "$@"; }
b --workload read --keys 1000000 --concurrency 256 --duration 5 2>&1 | head -1 | sed "s/^/$name load+read: /"
sleep 5
pids=$(pgrep -f "a-$name/c/node-.*/pleiades.toml")
echo "$name RSS MiB after 1M keys: $(for p in $pids; do echo $(( $(ps -o rss= -p $p) / 1024 )); done | paste -sd' ')"
for w in write read; do
  b --workload $w --keys 10000 --concurrency 64 --duration 10 2>&1 | head -1 | sed "s/^/$name /"
done
echo "$name RSS MiB at the end: $(for p in $pids; do echo $(( $(ps -o rss= -p $p) / 1024 )); done | paste -sd' ')"
kill -INT $up; wait $up
