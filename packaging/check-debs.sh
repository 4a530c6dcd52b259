#!/usr/bin/env bash
# Checks the .deb packages built by packaging/build-packages.sh (this host's architecture, plus
# the arm64 agent's contents): contents, conffiles, maintainer scripts, systemd-analyze verify of
# the units; with --install (as root) also a real install, the services' enablement links,
# remove (conffiles kept) and purge (everything gone).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "check-debs: $*" >&2; exit 1; }
ARCH=$(dpkg --print-architecture)
AGENT=$(ls target/packages/vmmon-agent_*_"$ARCH".deb)
COLL=$(ls target/packages/vmmon-collector_*_"$ARCH".deb)
AGENT_ARM=$(ls target/packages/vmmon-agent_*_arm64.deb)

# grep reads all its input (no -q): with pipefail, an early exit would SIGPIPE the producer.
has() { dpkg-deb -c "$1" | awk '{print $NF}' | grep -x "$2" >/dev/null || fail "$(basename "$1") lacks $2"; }
for f in ./usr/bin/vmmon-agent ./lib/systemd/system/vmmon-agent.service ./etc/vmmon/agent.toml \
         ./etc/default/vmmon-agent ./var/lib/vmmon/; do has "$AGENT" "$f"; done
for f in ./usr/bin/vmmon-collector ./lib/systemd/system/vmmon-collector.service ./etc/vmmon/collector.toml \
         ./etc/default/vmmon-collector ./var/lib/vmmon-collector/; do has "$COLL" "$f"; done
for f in ./usr/bin/vmmon-agent ./lib/systemd/system/vmmon-agent.service ./etc/vmmon/agent.toml \
         ./etc/default/vmmon-agent ./var/lib/vmmon/; do has "$AGENT_ARM" "$f"; done
[ "$(dpkg-deb -f "$AGENT_ARM" Architecture)" = arm64 ] || fail "arm64 agent has the wrong Architecture"
# The agent packages carry the static binaries (no Depends: not even libc6).
[ -z "$(dpkg-deb -f "$AGENT" Depends)" ] || fail "the static agent must not depend on anything"
cmp <(dpkg-deb --fsys-tarfile "$AGENT_ARM" | tar -xO ./usr/bin/vmmon-agent) target/packages/vmmon-agent-aarch64 \
  || fail "arm64 .deb does not carry vmmon-agent-aarch64"
conf() { dpkg-deb --ctrl-tarfile "$1" | tar -xO ./conffiles; }
conf "$AGENT" | grep -x /etc/vmmon/agent.toml >/dev/null || fail "agent.toml is not a conffile"
conf "$AGENT_ARM" | grep -x /etc/vmmon/agent.toml >/dev/null || fail "arm64 agent.toml is not a conffile"
conf "$COLL" | grep -x /etc/vmmon/collector.toml >/dev/null || fail "collector.toml is not a conffile"
for s in postinst prerm postrm; do
  dpkg-deb --ctrl-tarfile "$AGENT" | tar -t | grep -x "./$s" >/dev/null || fail "agent lacks $s"
done
dpkg-deb --ctrl-tarfile "$AGENT" | tar -xO ./postinst | grep "enable vmmon-agent.service" >/dev/null || fail "postinst does not enable"

# The shipped binaries run and their default configs validate (the agent's needs a token file).
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
dpkg-deb -x "$AGENT" "$TMP/root"
dpkg-deb -x "$COLL" "$TMP/root"
"$TMP/root/usr/bin/vmmon-agent" --version >/dev/null
echo vmt_check >"$TMP/token"
"$TMP/root/usr/bin/vmmon-agent" --config "$TMP/root/etc/vmmon/agent.toml" --token-file "$TMP/token" --check-config >/dev/null \
  || fail "agent default config does not validate"
"$TMP/root/usr/bin/vmmon-collector" serve --config "$TMP/root/etc/vmmon/collector.toml" --check-config >/dev/null \
  || fail "collector default config does not validate"

# systemd-analyze verify against the unpacked tree (with the host's unit library for targets).
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$TMP/root/lib/systemd" "$TMP/root/bin"
  cp -r /lib/systemd/system/. "$TMP/root/lib/systemd/system/"
  cp /bin/kill "$TMP/root/bin/kill"
  out=$(systemd-analyze verify --root="$TMP/root" "$TMP/root/lib/systemd/system/vmmon-agent.service" \
        "$TMP/root/lib/systemd/system/vmmon-collector.service" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
  echo "systemd-analyze verify: ok"
else
  fail "systemd-analyze not installed"
fi

if [ "${1:-}" = "--install" ]; then
  [ "$(id -u)" = 0 ] || fail "--install needs root"
  dpkg -i "$AGENT" "$COLL" >/dev/null
  test -x /usr/bin/vmmon-agent && test -x /usr/bin/vmmon-collector || fail "binaries not installed"
  test -L /etc/systemd/system/multi-user.target.wants/vmmon-agent.service || fail "agent not enabled"
  test -L /etc/systemd/system/multi-user.target.wants/vmmon-collector.service || fail "collector not enabled"
  getent passwd vmmon >/dev/null || fail "vmmon user not created"
  [ "$(stat -c %U /var/lib/vmmon-collector)" = vmmon ] || fail "collector state dir not owned by vmmon"
  # Upgrade (the same package again runs the upgrade path): the operator's config and the
  # state stay, the service stays enabled.
  echo '# operator edit' >>/etc/vmmon/agent.toml
  echo state >/var/lib/vmmon/agent-state.slots
  dpkg -i --force-confold "$AGENT" >/dev/null
  grep -q '# operator edit' /etc/vmmon/agent.toml || fail "upgrade replaced the changed config"
  test -f /var/lib/vmmon/agent-state.slots || fail "upgrade lost the state"
  test -L /etc/systemd/system/multi-user.target.wants/vmmon-agent.service || fail "upgrade disabled the agent"
  dpkg -r vmmon-agent vmmon-collector >/dev/null
  test ! -e /usr/bin/vmmon-agent || fail "remove left the binary"
  test -f /etc/vmmon/agent.toml || fail "remove must keep conffiles"
  test ! -e /etc/systemd/system/multi-user.target.wants/vmmon-agent.service || fail "remove left the enablement"
  dpkg -P vmmon-agent vmmon-collector >/dev/null
  test ! -e /etc/vmmon/agent.toml || fail "purge left the conffile"
  test ! -e /var/lib/vmmon-collector || fail "purge left the state dir"
  test ! -e /var/lib/vmmon || fail "purge left the agent's state dir"
  echo "install/upgrade/remove/purge: ok"
fi
echo "check-debs: ok"
