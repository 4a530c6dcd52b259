#!/usr/bin/env bash
# Peak resident memory (VmHWM) of the running agent daemon (issue 13): N idle processes besides
# the system's, a 1 s interval, monitoring on, reporting to a real collector on loopback.
# Prints the agent's VmHWM and VmRSS after SECS seconds, and the daemon's CPU per tick (utime +
# stime over the run, all of it: sampling, spooling, JSON, sending) beside the /proc floor
# measured with the same processes present (vmmon-sample-bench --floor). Release build.
# AGENT_BIN picks another agent binary (e.g. target/packages/vmmon-agent-x86_64, the static musl
# build). Results: docs/benchmarks.md.
#   N=1000 SECS=60 scripts/agent_rss.sh
#   AGENT_BIN=target/packages/vmmon-agent-x86_64 N=1000 SECS=60 scripts/agent_rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}
SECS=${SECS:-60}
cargo build --release -q -p vmmon-agent -p vmmon-collector
AGENT_BIN=${AGENT_BIN:-target/release/vmmon-agent}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq "$N"); do sleep 900 & pids+=($!); done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
VMMON_ADMIN_PASSWORD=bench-rss-pw target/release/vmmon-collector serve --listen "127.0.0.1:$port" --data "$tmp/c" >"$tmp/collector.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
token=$(target/release/vmmon-collector token create --data "$tmp/c" --project p --region r | tail -n 1)
env ${AGENT_ENV:-} VMMON_LOG=warn "$AGENT_BIN" --collector "ws://127.0.0.1:$port/rpc" --token "$token" \
  --instance-id rss-bench --interval 1 --state-dir "$tmp/a" >"$tmp/agent.log" 2>&1 &
agent=$!
pids+=("$agent")
api() { curl -s -X POST "http://127.0.0.1:$port/wsgi_app.py" -H 'content-type: application/json' -d "$1"; }
session=$(api '{"method":458753,"data":{"user_name":"admin","password":"bench-rss-pw"}}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')
for _ in $(seq 50); do
  status=$(api "{\"method\":32523,\"data\":{\"instance_id\":\"rss-bench\"},\"session_id\":\"$session\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["status_code"])')
  [ "$status" = 2 ] && break
  sleep 0.2
done
[ "$status" = 2 ] || { echo "startmonitor was not confirmed (status $status)"; exit 1; }
# CPU ticks (utime + stime, fields 14 and 15 of stat) of the agent.
cpu_ticks() { sed 's/.*) //' "/proc/$agent/stat" | awk '{print $12 + $13}'; }
c0=$(cpu_ticks)
sleep "$SECS"
c1=$(cpu_ticks)
procs=$(ls /proc | grep -c '^[0-9]')
hz=$(getconf CLK_TCK)
floor=$(target/release/vmmon-sample-bench --floor --procs 0 --samples 20 | sed -n 's/.*cpu_ms_per_sample=\([0-9.]*\).*/\1/p')
awk -v t=$((c1 - c0)) -v hz="$hz" -v s="$SECS" -v f="$floor" 'BEGIN {
  d = t * 1000 / hz / s; printf "agent_cpu daemon_ms_per_tick=%.2f floor_ms_per_sample=%.2f ratio=%.3f\n", d, f, d / f }'
grep -E "^(RssAnon|RssFile|Threads)" "/proc/$agent/status" | tr -s " \t" " " | tr "\n" " "; echo
echo "agent_rss procs_present=$procs interval_secs=1 monitoring=on secs=$SECS" \
  "$(grep -E '^(VmHWM|VmRSS)' "/proc/$agent/status" | tr -s ' \t' ' ' | tr '\n' ' ')"
