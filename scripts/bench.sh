#!/usr/bin/env bash
# Runs every benchmark in release mode; each prints its figure, the floor measured in the same run
# and their ratio (these machines are shared and noisy: the ratios are what count).
# Results and their reading: docs/benchmarks.md.  Env: VMMON_BENCH_ROWS=50000000 for the full
# query scenario (default 5,000,000 to keep the run short).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p vmmon-agent --bin vmmon-sample-bench

echo "== agent: CPU per full sample vs the /proc floor (stat + io for every pid)"
for n in 100 1000 5000; do
  target/release/vmmon-sample-bench --procs "$n" --samples 20 | grep -E "procs_present|ratio|peak_rss"
done
echo "== agent: per-process network attribution cost with 1,000 TCP sockets"
target/release/vmmon-sample-bench --procs 500 --sockets 1000 | tail -n 6

echo "== agent daemon: peak RSS (VmHWM) and CPU per tick with 1,000 processes, 1 s interval, monitoring on"
N=1000 SECS=60 scripts/agent_rss.sh | tail -n 3
if [ -x target/packages/vmmon-agent-x86_64 ]; then
  echo "== the same with the static (musl) agent of packaging/build-packages.sh"
  AGENT_BIN=target/packages/vmmon-agent-x86_64 N=1000 SECS=60 scripts/agent_rss.sh | tail -n 3
else
  echo "NOTE: target/packages/vmmon-agent-x86_64 not built: static agent not measured (packaging/build-packages.sh)"
fi

echo "== collector: ingest over WebSocket JSON-RPC into the durable store vs raw batched insert"
cargo bench -q -p vmmon-collector --bench ingest 2>/dev/null

echo "== collector: ingest into PostgreSQL (one and two collectors) vs a raw COPY"
pg_dir=$(mktemp -d /tmp/vmmon-pg-bench.XXXXXX)
chmod 755 "$pg_dir"
if url=$(scripts/pg-cluster.sh start "$pg_dir/cluster"); then
  VMMON_BENCH_PG_URL=$url cargo bench -q -p vmmon-collector --bench ingest_pg 2>/dev/null || true
  echo "== collector: legacy API queries on a PostgreSQL store vs the bare store query"
  VMMON_BENCH_PG_URL=$url cargo bench -q -p vmmon-collector --bench queries 2>/dev/null || true
  scripts/pg-cluster.sh stop "$pg_dir/cluster"
else
  echo "NOTE: PostgreSQL server binaries not installed: skipped (apt-get install postgresql)"
fi
rm -rf "$pg_dir"

echo "== collector: legacy API queries vs the bare store query"
cargo bench -q -p vmmon-collector --bench queries 2>/dev/null

echo "== collector: flow_monthly over 12 months for 1,000 VMs"
cargo bench -q -p vmmon-collector --bench flow_monthly 2>/dev/null
