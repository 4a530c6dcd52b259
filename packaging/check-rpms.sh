#!/usr/bin/env bash
# Checks the .rpm packages built by packaging/build-packages.sh: file lists (rpm -qpl), config
# files marked %config(noreplace), scriptlets (rpm -qp --scripts), and, as root, a real install
# into an `rpm --root` directory with the scriptlets run inside it (a minimal root holding a
# shell and the few tools they call, copied from this host with their libraries): enable on
# install, config and state kept on upgrade, stop and disable on erase (a changed config kept
# as .rpmsave, the state directory kept).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "check-rpms: $*" >&2; exit 1; }
P=target/packages
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
AGENT_X86=$P/vmmon-agent-$VERSION-1.x86_64.rpm
AGENT_ARM=$P/vmmon-agent-$VERSION-1.aarch64.rpm
COLL=$P/vmmon-collector-$VERSION-1.x86_64.rpm
for f in "$AGENT_X86" "$AGENT_ARM" "$COLL"; do [ -f "$f" ] || fail "$f missing (run packaging/build-packages.sh)"; done

# grep reads all its input (no -q): with pipefail, an early exit would SIGPIPE the producer.
has() { rpm -qpl "$1" | grep -x "$2" >/dev/null || fail "$(basename "$1") lacks $2"; }
for a in "$AGENT_X86" "$AGENT_ARM"; do
  for f in /usr/bin/vmmon-agent /lib/systemd/system/vmmon-agent.service /etc/vmmon/agent.toml \
           /etc/default/vmmon-agent /var/lib/vmmon; do has "$a" "$f"; done
  rpm -qpc "$a" | grep -x /etc/vmmon/agent.toml >/dev/null || fail "agent.toml is not %config"
  # noreplace: RPMFILE_CONFIG (1) | RPMFILE_NOREPLACE (16) in the file flags.
  flags=$(rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS}\n]' "$a" | awk '$1=="/etc/vmmon/agent.toml"{print $2}')
  [ $((flags & 17)) = 17 ] || fail "agent.toml is not %config(noreplace) (flags $flags)"
  scripts=$(rpm -qp --scripts "$a")
  for s in "postinstall scriptlet" "preuninstall scriptlet" "postuninstall scriptlet"; do
    grep -F "$s" <<<"$scripts" >/dev/null || fail "$(basename "$a") lacks its $s"
  done
  grep -F "systemctl enable vmmon-agent.service" <<<"$scripts" >/dev/null || fail "%post does not enable"
  grep -F "disable --now vmmon-agent.service" <<<"$scripts" >/dev/null || fail "%preun does not stop and disable"
done
[ "$(rpm -qp --qf '%{ARCH}' "$AGENT_ARM")" = aarch64 ] || fail "aarch64 package has the wrong arch"
# Each agent package carries its architecture's static binary (same SHA-256 as the file).
digest() { rpm -qp --qf '[%{FILENAMES} %{FILEDIGESTS}\n]' "$1" | awk '$1=="/usr/bin/vmmon-agent"{print $2}'; }
[ "$(digest "$AGENT_X86")" = "$(sha256sum "$P/vmmon-agent-x86_64" | cut -d' ' -f1)" ] \
  || fail "x86_64 package does not carry vmmon-agent-x86_64"
[ "$(digest "$AGENT_ARM")" = "$(sha256sum "$P/vmmon-agent-aarch64" | cut -d' ' -f1)" ] \
  || fail "aarch64 package does not carry vmmon-agent-aarch64"
for f in /usr/bin/vmmon-collector /lib/systemd/system/vmmon-collector.service /etc/vmmon/collector.toml \
         /var/lib/vmmon-collector; do has "$COLL" "$f"; done
rpm -qp --scripts "$COLL" | grep -F "useradd -r" >/dev/null || fail "collector %pre does not create its user"
echo "rpm -qpl / --scripts: ok"

if [ "${1:-}" = "--install" ]; then
  [ "$(id -u)" = 0 ] || fail "--install needs root"
  R=$(mktemp -d)
  trap 'rm -rf "$R"' EXIT
  # A root with /bin/sh and what the scriptlets call, each with its shared libraries.
  mkdir -p "$R/etc" "$R/bin" "$R/usr/bin" "$R/usr/sbin" "$R/dev"
  mknod -m 0666 "$R/dev/null" c 1 3
  for tool in sh mkdir ln rm getent groupadd useradd; do
    path=$(command -v "$tool") || fail "$tool not found on this host"
    mkdir -p "$R$(dirname "$path")"
    cp -L "$path" "$R$path"
    [ -e "$R/bin/$tool" ] || ln -sf "$path" "$R/bin/$tool"
    for lib in $(ldd "$path" | grep -o '/[^ ]*'); do
      mkdir -p "$R$(dirname "$lib")"
      cp -L "$lib" "$R$lib"
    done
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
  printf 'root:x:0:\n' >"$R/etc/group"
  printf 'root:*:19000:0:99999:7:::\n' >"$R/etc/shadow"
  printf 'root:*::\n' >"$R/etc/gshadow"
  # Debian's rpm asks for --force-debian before it installs anything.
  rpm --root "$R" --initdb
  rpm() { command rpm --force-debian "$@"; }
  # --nodeps: nothing in this root is an rpm package (not even the /bin/sh the scriptlets need).
  rpm --root "$R" -i --nodeps "$AGENT_X86" "$COLL" 2>&1 | (grep -v "^warning: .*does not exist - using root" || true)
  test -x "$R/usr/bin/vmmon-agent" || fail "agent binary not installed"
  test -L "$R/etc/systemd/system/multi-user.target.wants/vmmon-agent.service" || fail "agent not enabled on install"
  test -L "$R/etc/systemd/system/multi-user.target.wants/vmmon-collector.service" || fail "collector not enabled on install"
  grep -q '^vmmon:' "$R/etc/passwd" || fail "collector %pre did not create the vmmon user"
  uid=$(awk -F: '$1=="vmmon"{print $3}' "$R/etc/passwd")
  [ "$(stat -c %u "$R/var/lib/vmmon-collector")" = "$uid" ] || fail "collector state dir not owned by vmmon"
  [ "$(stat -c %a "$R/var/lib/vmmon")" = 700 ] || fail "agent state dir is not 0700"
  "$R/usr/bin/vmmon-agent" --version >/dev/null || fail "installed agent does not run"
  # Upgrade (reinstall of the same package runs the upgrade scriptlets: $1 = 2 then 1): the
  # operator's config and the state stay; the service stays enabled.
  echo '# operator edit' >>"$R/etc/vmmon/agent.toml"
  echo state >"$R/var/lib/vmmon/agent-state.slots"
  rpm --root "$R" -U --replacepkgs --nodeps "$AGENT_X86"
  grep -q '# operator edit' "$R/etc/vmmon/agent.toml" || fail "upgrade replaced the changed config"
  test -f "$R/var/lib/vmmon/agent-state.slots" || fail "upgrade lost the state"
  test -L "$R/etc/systemd/system/multi-user.target.wants/vmmon-agent.service" || fail "upgrade disabled the agent"
  # Erase: disabled, binary gone, changed config kept as .rpmsave, state kept.
  rpm --root "$R" -e vmmon-agent vmmon-collector 2>&1 | (grep -v "^warning: .* saved as .*rpmsave" || true)
  test ! -e "$R/usr/bin/vmmon-agent" || fail "erase left the binary"
  test ! -e "$R/etc/systemd/system/multi-user.target.wants/vmmon-agent.service" || fail "erase left the enablement"
  test -f "$R/etc/vmmon/agent.toml.rpmsave" || fail "erase dropped the changed config"
  test -f "$R/var/lib/vmmon/agent-state.slots" || fail "erase removed the state"
  echo "rpm --root install/upgrade/erase: ok"
fi
echo "check-rpms: ok"
