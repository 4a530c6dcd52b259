#!/usr/bin/env bash
# The running agent daemon's CPU per tick, two agent builds A and B alternately in the same
# minutes (issue 15, item 5; docs/benchmarks.md §1c). One collector on loopback and N idle
# processes for the whole run; each round runs A then B (B then A on even rounds), each with a
# fresh state directory, 1 s interval, monitoring on, for SECS seconds after a warm-up, then the
# /proc floor (vmmon-sample-bench --floor) with the same processes present. Prints one line per
# agent run: daemon CPU ms/tick (utime + stime of every thread, from /proc/PID/stat, over the
# run; and the same from schedstat, in ns, of the threads alive at the end), floor ms/sample,
# ratio, VmHWM. The machine is shared: compare A and B within a run, never across runs.
#   scripts/agent_cost_ab.sh /tmp/before/vmmon-agent target/release/vmmon-agent
#   N=1000 SECS=30 ROUNDS=3 WARMUP=5 scripts/agent_cost_ab.sh A B
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?agent binary A}
B=${2:?agent binary B}
N=${N:-1000}
SECS=${SECS:-30}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-5}
COLLECTOR_BIN=${COLLECTOR_BIN:-target/release/vmmon-collector}
FLOOR_BIN=${FLOOR_BIN:-target/release/vmmon-sample-bench}
tmp=$(mktemp -d)
pids=()
agent=
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
for _ in $(seq "$N"); do sleep 3600 & pids+=($!); done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
VMMON_ADMIN_PASSWORD=bench-ab-pw "$COLLECTOR_BIN" serve --listen "127.0.0.1:$port" --data "$tmp/c" >"$tmp/collector.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
api() { curl -s -X POST "http://127.0.0.1:$port/wsgi_app.py" -H 'content-type: application/json' -d "$1"; }
session=$(api '{"method":458753,"data":{"user_name":"admin","password":"bench-ab-pw"}}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')
# utime + stime of the whole process (dead threads included), in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# On-CPU ns of the threads alive now (finer than clock ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {print s}'; }
hz=$(getconf CLK_TCK)
run() { # label binary round
  local id="ab-$1-$3"
  local token
  token=$("$COLLECTOR_BIN" token create --data "$tmp/c" --project p --region r | tail -n 1)
  VMMON_LOG=warn "$2" --collector "ws://127.0.0.1:$port/rpc" --token "$token" \
    --instance-id "$id" --interval 1 --state-dir "$tmp/a-$id" >"$tmp/agent-$id.log" 2>&1 &
  agent=$!
  local status=
  for _ in $(seq 50); do
    status=$(api "{\"method\":32523,\"data\":{\"instance_id\":\"$id\"},\"session_id\":\"$session\"}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["status_code"])')
    [ "$status" = 2 ] && break
    sleep 0.2
  done
  [ "$status" = 2 ] || { echo "startmonitor was not confirmed for $id (status $status)"; exit 1; }
  sleep "$WARMUP"
  local c0 n0 c1 n1
  c0=$(cpu_ticks "$agent"); n0=$(cpu_ns "$agent")
  sleep "$SECS"
  c1=$(cpu_ticks "$agent"); n1=$(cpu_ns "$agent")
  local hwm
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$agent/status")
  kill "$agent"; wait "$agent" 2>/dev/null || true; agent=
  local floor
  floor=$("$FLOOR_BIN" --floor --procs 0 --samples 20 | sed -n 's/.*cpu_ms_per_sample=\([0-9.]*\).*/\1/p')
  awk -v l="$1" -v r="$3" -v t=$((c1 - c0)) -v ns=$((n1 - n0)) -v hz="$hz" -v s="$SECS" -v f="$floor" -v hwm="$hwm" 'BEGIN {
    d = t * 1000 / hz / s; e = ns / 1e6 / s
    printf "round=%s build=%s daemon_ms_per_tick=%.2f schedstat_ms_per_tick=%.2f floor_ms_per_sample=%.2f ratio=%.3f ratio_schedstat=%.3f vmhwm_kib=%s\n", r, l, d, e, f, d / f, e / f, hwm }'
}
echo "procs_present=$(ls /proc | grep -c '^[0-9]') secs=$SECS warmup=$WARMUP rounds=$ROUNDS"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then run A "$A" "$r"; run B "$B" "$r"; else run B "$B" "$r"; run A "$A" "$r"; fi
done
