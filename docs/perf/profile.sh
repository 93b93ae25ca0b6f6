#!/usr/bin/env bash
# Profiles the three nodes of a local constellation under a workload at concurrency 64.
# Reads are profiled after 20 s of writes, as `bench compare` runs them: on keys with many
# versions, memtables and level-0 files.
# usage: profile.sh BINARY NAME [WORKLOAD]   (WORKLOAD: write (default) or read)
set -u
bin=$1; name=$2; workload=${3:-write}
mkdir -p /tmp/bench && cd /tmp/bench && rm -rf prof-$name && mkdir prof-$name
$bin up --data-dir prof-$name/c --base-port 7700 --log-level warn > prof-$name/up.log 2>&1 &
up=$!
for i in $(seq 1 60); do grep -q "is up" prof-$name/up.log && break; sleep 0.5; done
bench() {
  $bin bench --addr 127.0.0.1:7701 --ca-cert prof-$name/c/tls/ca.crt --concurrency 64 "$@"
}
if [ "$workload" = read ]; then bench --workload write --duration 20 > prof-$name/writes.txt 2>&1; fi
bench --workload "$workload" --duration 25 > prof-$name/bench.txt 2>&1 &
bench=$!
sleep 6
pids=$(pgrep -f "prof-$name/c/node-.*/pleiades.toml" | paste -sd,)
perf record -F 299 --call-graph dwarf,16384 -p "$pids" -o prof-$name/perf.data -- sleep 10 > prof-$name/perf.log 2>&1
wait $bench
kill -INT $up; wait $up
perf script -i prof-$name/perf.data 2>/dev/null | inferno-collapse-perf > prof-$name/folded.txt
inferno-flamegraph --title "pleiades ${workload}s, concurrency 64 ($name)" < prof-$name/folded.txt > prof-$name/flame.svg
cat prof-$name/bench.txt | head -3
