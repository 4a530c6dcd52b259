#!/usr/bin/env bash
# The running agent daemon's CPU per tick, two agent builds A and B side by side (issue 15,
# item 5; docs/benchmarks.md §1c). One collector on loopback and N idle processes for the whole
# run; each round starts A and B together (fresh state directories, 1 s interval, monitoring on,
# reporting to the collector), and after a warm-up measures both over the same SECS seconds, so
# the neighbours' noise falls on both alike, while the /proc floor is measured meanwhile with the
# same processes present, two ways, alternately: 20 passes back to back (vmmon-sample-bench
# --floor, as in §1 and before) and 4 passes 1 s apart (--pause-ms 1000: the daemon's cadence,
# caches as cold as the daemon's). Prints one line per round: each daemon's CPU ms/tick (utime +
# stime of every thread, from /proc/PID/stat; and the same from schedstat, in ns, of the threads
# alive at the end), B/A, both floors (mean ms/pass), each daemon / floor, VmHWM. The machine is shared: B/A within a round is the
# robust figure; the ratios to the floor move with the neighbours' load.
#   scripts/agent_cost_ab.sh /tmp/before/vmmon-agent target/release/vmmon-agent
#   N=1000 SECS=30 ROUNDS=3 WARMUP=5 scripts/agent_cost_ab.sh A B
# PERF_DIR=dir also records both daemons with `perf record --call-graph dwarf` into
# dir/perf-{A,B}-ROUND.data (the figures of such a run include perf's own overhead).
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
agents=()
cleanup() {
  for p in "${agents[@]}"; do kill "$p" 2>/dev/null || true; done
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
start_agent() { # id binary → pid on stdout
  local token
  token=$("$COLLECTOR_BIN" token create --data "$tmp/c" --project p --region r | tail -n 1)
  VMMON_LOG=warn "$2" --collector "ws://127.0.0.1:$port/rpc" --token "$token" \
    --instance-id "$1" --interval 1 --state-dir "$tmp/a-$1" >"$tmp/agent-$1.log" 2>&1 &
  echo $!
}
monitor_on() { # id
  local status=
  for _ in $(seq 50); do
    status=$(api "{\"method\":32523,\"data\":{\"instance_id\":\"$1\"},\"session_id\":\"$session\"}" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["status_code"])')
    [ "$status" = 2 ] && return 0
    sleep 0.2
  done
  echo "startmonitor was not confirmed for $1 (status $status)"; exit 1
}
round() { # round number: A and B side by side over the same SECS, the floor sampled meanwhile
  local r=$1 a b
  # Both binaries read from disk alike: a binary just written (a fresh build, `strip`) sits in
  # the page cache in large folios, and a fault then maps the whole folio, so its whole text
  # counts in VmHWM (+1.6 MiB seen, musl) where a copied one counts only the pages it touches.
  # DROP_CACHES=0 leaves the cache alone (a machine shared with other work).
  if [ "${DROP_CACHES:-1}" = 1 ] && [ -w /proc/sys/vm/drop_caches ]; then
    sync; echo 3 >/proc/sys/vm/drop_caches
  fi
  a=$(start_agent "ab-A-$r" "$A"); agents+=("$a")
  b=$(start_agent "ab-B-$r" "$B"); agents+=("$b")
  monitor_on "ab-A-$r"; monitor_on "ab-B-$r"
  sleep "$WARMUP"
  local ca0 cb0 na0 nb0 ca1 cb1 na1 nb1 end floors=() perfs=()
  ca0=$(cpu_ticks "$a"); cb0=$(cpu_ticks "$b"); na0=$(cpu_ns "$a"); nb0=$(cpu_ns "$b")
  if [ -n "${PERF_DIR:-}" ]; then
    perf record -q -F "${PERF_FREQ:-2999}" --call-graph dwarf,32768 -p "$a" -o "$PERF_DIR/perf-A-$r.data" -- sleep "$SECS" 2>/dev/null &
    perfs+=($!)
    perf record -q -F "${PERF_FREQ:-2999}" --call-graph dwarf,32768 -p "$b" -o "$PERF_DIR/perf-B-$r.data" -- sleep "$SECS" 2>/dev/null &
    perfs+=($!)
  fi
  end=$((SECONDS + SECS))
  local paced=()
  while [ "$SECONDS" -lt "$end" ]; do
    floors+=("$("$FLOOR_BIN" --floor --procs 0 --samples 20 | sed -n 's/.*cpu_ms_per_sample=\([0-9.]*\).*/\1/p')")
    paced+=("$("$FLOOR_BIN" --floor --procs 0 --samples 4 --pause-ms 1000 | sed -n 's/.*cpu_ms_per_sample=\([0-9.]*\).*/\1/p')")
  done
  ca1=$(cpu_ticks "$a"); cb1=$(cpu_ticks "$b"); na1=$(cpu_ns "$a"); nb1=$(cpu_ns "$b")
  # By pid: `jobs -p` may no longer list a perf that has finished, and would name a sleeper.
  [ "${#perfs[@]}" -eq 0 ] || wait "${perfs[@]}" 2>/dev/null || true
  local ha hb
  ha=$(awk '/^VmHWM/ {print $2}' "/proc/$a/status"); hb=$(awk '/^VmHWM/ {print $2}' "/proc/$b/status")
  kill "$a" "$b"; wait "$a" "$b" 2>/dev/null || true; agents=()
  local f p
  f=$(printf '%s\n' "${floors[@]}" | awk '{s += $1; n++} END {printf "%.3f", s / n}')
  p=$(printf '%s\n' "${paced[@]}" | awk '{s += $1; n++} END {printf "%.3f", s / n}')
  awk -v r="$r" -v ta=$((ca1 - ca0)) -v tb=$((cb1 - cb0)) -v na=$((na1 - na0)) -v nb=$((nb1 - nb0)) \
    -v hz="$hz" -v s="$SECS" -v f="$f" -v p="$p" -v ha="$ha" -v hb="$hb" 'BEGIN {
    a = ta * 1000 / hz / s; b = tb * 1000 / hz / s; ea = na / 1e6 / s; eb = nb / 1e6 / s
    printf "round=%s A_ms_per_tick=%.2f B_ms_per_tick=%.2f B/A=%.3f (schedstat A=%.2f B=%.2f B/A=%.3f) floor_ms=%.2f A/floor=%.3f B/floor=%.3f paced_floor_ms=%.2f A/paced=%.3f B/paced=%.3f VmHWM_KiB A=%s B=%s\n",
      r, a, b, b / a, ea, eb, eb / ea, f, a / f, b / f, p, a / p, b / p, ha, hb }'
}
echo "procs_present=$(ls /proc | grep -c '^[0-9]') secs=$SECS warmup=$WARMUP rounds=$ROUNDS"
for r in $(seq "$ROUNDS"); do round "$r"; done
