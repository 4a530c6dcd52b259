#!/usr/bin/env bash
# Builds vmmon and starts, on this host, a collector (store in ./.vmmon-dev) plus a local agent
# reporting to it with monitoring on; prints the URL, the admin credentials and a curl call.
# Re-running restarts both. Stop with: scripts/quickstart.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=.vmmon-dev
LISTEN=${VMMON_LISTEN:-127.0.0.1:8086}
INSTANCE=${VMMON_INSTANCE_ID:-local-$(hostname -s 2>/dev/null || echo dev)}
ADMIN_PASSWORD=${VMMON_ADMIN_PASSWORD:-vmmon-admin}

stop() {
  for p in agent collector; do
    if [ -f "$DEV/$p.pid" ]; then
      kill "$(cat "$DEV/$p.pid")" 2>/dev/null || true
      rm -f "$DEV/$p.pid"
    fi
  done
}
if [ "${1:-}" = "stop" ]; then stop; echo "vmmon stopped"; exit 0; fi
stop
mkdir -p "$DEV"

echo "==> building (release)…"
cargo build --release --bins -q
BIN=target/release

echo "==> starting collector on $LISTEN (store: $DEV/data)"
VMMON_ADMIN_PASSWORD="$ADMIN_PASSWORD" nohup "$BIN/vmmon-collector" serve --listen "$LISTEN" --data "$DEV/data" \
  >"$DEV/collector.out" 2>"$DEV/collector.log" &
echo $! >"$DEV/collector.pid"
for _ in $(seq 1 100); do
  grep -q "listening on" "$DEV/collector.out" 2>/dev/null && break
  kill -0 "$(cat "$DEV/collector.pid")" 2>/dev/null || { cat "$DEV/collector.log"; exit 1; }
  sleep 0.1
done
URL="http://$LISTEN"
# The admin user exists from the first start; keep its password in sync with what we print.
VMMON_PASSWORD="$ADMIN_PASSWORD" "$BIN/vmmon-collector" user add --data "$DEV/data" --name admin --admin >/dev/null

if [ ! -s "$DEV/agent.token" ]; then
  "$BIN/vmmon-collector" token create --data "$DEV/data" --project demo --region local --party dev | tail -n 1 >"$DEV/agent.token"
  chmod 600 "$DEV/agent.token"
fi
echo "==> starting agent as instance $INSTANCE (every 5 s)"
nohup "$BIN/vmmon-agent" --collector "ws://$LISTEN/rpc" --token-file "$DEV/agent.token" --interval 5 \
  --state-dir "$DEV/agent" --instance-id "$INSTANCE" >"$DEV/agent.out" 2>"$DEV/agent.log" &
echo $! >"$DEV/agent.pid"

api() { curl -s -X POST "$URL/wsgi_app.py" -H 'Content-Type: application/json' -d "$1"; }
json_field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
SID=$(api "{\"method\":458753,\"data\":{\"user_name\":\"admin\",\"password\":\"$ADMIN_PASSWORD\"}}" | json_field session_id)
[ -n "$SID" ] || { echo "login failed; see $DEV/collector.log"; exit 1; }

echo "==> waiting for the agent to register, then turning monitoring on"
for _ in $(seq 1 100); do
  R=$(api "{\"method\":32523,\"data\":{\"instance_id\":\"$INSTANCE\"},\"session_id\":\"$SID\"}")
  case "$R" in *'"status_code":2'*) break ;; esac
  sleep 0.2
done
# The first process sample arrives about a second after monitoring turns on.
for _ in $(seq 1 50); do
  R=$(api "{\"method\":611711,\"data\":{\"instance_id\":\"$INSTANCE\"},\"session_id\":\"$SID\",\"limit\":1}")
  case "$R" in *'"cmd"'*) break ;; esac
  sleep 0.2
done

cat <<MSG

vmmon is running.
  collector:   $URL   (health: $URL/healthz; logs: $DEV/collector.log, $DEV/agent.log)
  admin:       user admin, password $ADMIN_PASSWORD
  instance:    $INSTANCE (project demo, region local), monitoring on
  session id:  $SID   (expires after 24 h idle; log in again with method 458753)
  dashboard:   $URL/ui/   (log in as admin in a browser)

Top 5 processes of this host right now (method 611711):

  curl -s -X POST $URL/wsgi_app.py -H 'Content-Type: application/json' \\
    -d '{"method":611711,"data":{"instance_id":"$INSTANCE;"},"session_id":"$SID","limit":5}'

More of the same session:
  curl -s -H 'X-Auth-Token: $SID' '$URL/mana_api/vm'                       # VM inventory (mana_api)
  curl -s -H 'X-Auth-Token: $SID' '$URL/mana_api/flow?project_id=demo'     # 10-minute bandwidth
  curl -s -H 'X-Auth-Token: $SID' '$URL/v1/rating/modules'                 # rating (CloudKitty v1)
  curl -s -H 'X-Auth-Token: $SID' '$URL/v2/summary'                         # rating (CloudKitty v2)
  curl -s -H 'X-Auth-Token: $SID' "$URL/api/series?instance_id=$INSTANCE&metric=cpu&points=60"  # a chart's series
  curl -s -H 'X-Auth-Token: $SID' '$URL/metrics' | grep vmmon_vm_          # Prometheus exposition
  curl -s '$URL/'                                                          # index of every API
CDN flow needs an edge token and an access log: see README, "CDN flow".

Stop everything with: scripts/quickstart.sh stop
MSG
