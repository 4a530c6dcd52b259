#!/usr/bin/env bash
# Builds target/debian/vmmon-agent_<version>_<arch>.deb and vmmon-collector_<version>_<arch>.deb
# with dpkg-deb: binary, systemd unit, default config as a conffile, /etc/default file, state
# directory, maintainer scripts that enable the service, stop it on remove and clean up on purge.
# Usage: packaging/build-debs.sh [--no-build]   (--no-build packages the existing release binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
ARCH=$(dpkg --print-architecture)
OUT=target/debian
[ "${1:-}" = "--no-build" ] || cargo build --release -q -p vmmon-agent -p vmmon-collector --bins
mkdir -p "$OUT"

stage() { # name
  local name=$1 dir
  dir=$(mktemp -d)
  chmod 0755 "$dir"
  install -d "$dir/DEBIAN" "$dir/usr/bin" "$dir/lib/systemd/system" "$dir/etc/vmmon" "$dir/etc/default" \
    "$dir/usr/share/doc/$name"
  install -m 0755 "target/release/$name" "$dir/usr/bin/$name"
  # Debug info goes to a separate file (kept in target/debian/debug/, linked by name and CRC so
  # gdb and addr2line find it); the shipped binary is stripped.
  mkdir -p "$OUT/debug"
  objcopy --only-keep-debug "$dir/usr/bin/$name" "$OUT/debug/$name.debug"
  strip --strip-debug --strip-unneeded "$dir/usr/bin/$name"
  objcopy --add-gnu-debuglink="$OUT/debug/$name.debug" "$dir/usr/bin/$name"
  install -m 0644 "systemd/$name.service" "$dir/lib/systemd/system/$name.service"
  install -m 0644 "systemd/$name.default" "$dir/etc/default/$name"
  install -m 0644 README.md "$dir/usr/share/doc/$name/README.md"
  echo "$dir"
}

control() { # dir name description depends
  cat >"$1/DEBIAN/control" <<CTL
Package: $2
Version: $VERSION
Architecture: $ARCH
Maintainer: vmmon developers <vmmon@localhost>
Section: admin
Priority: optional
Depends: $4
Description: $3
CTL
  (cd "$1" && find etc -type f | sed 's|^|/|' | sort) >"$1/DEBIAN/conffiles"
}

scripts() { # dir name purge-paths
  local dir=$1 name=$2 purge=$3
  cat >"$dir/DEBIAN/postinst" <<SH
#!/bin/sh
set -e
if [ "\$1" = "configure" ]; then
  $([ "$name" = vmmon-collector ] && echo 'getent passwd vmmon >/dev/null || adduser --system --group --home /var/lib/vmmon-collector --no-create-home vmmon >/dev/null')
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
  if command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper enable $name.service >/dev/null || true
  else
    mkdir -p /etc/systemd/system/multi-user.target.wants
    ln -sf /lib/systemd/system/$name.service /etc/systemd/system/multi-user.target.wants/$name.service
  fi
  if [ -d /run/systemd/system ]; then systemctl restart $name.service || true; fi
fi
exit 0
SH
  cat >"$dir/DEBIAN/prerm" <<SH
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "\$1" = "remove" ]; then systemctl stop $name.service || true; fi
exit 0
SH
  cat >"$dir/DEBIAN/postrm" <<SH
#!/bin/sh
set -e
if [ "\$1" = "remove" ] || [ "\$1" = "purge" ]; then
  if command -v deb-systemd-helper >/dev/null 2>&1; then
    deb-systemd-helper disable $name.service >/dev/null || true
  fi
  rm -f /etc/systemd/system/multi-user.target.wants/$name.service
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
if [ "\$1" = "purge" ]; then
  if command -v deb-systemd-helper >/dev/null 2>&1; then deb-systemd-helper purge $name.service >/dev/null || true; fi
  rm -rf $purge
fi
exit 0
SH
  chmod 0755 "$dir/DEBIAN/postinst" "$dir/DEBIAN/prerm" "$dir/DEBIAN/postrm"
}

# Agent: state in /var/lib/vmmon; the token goes into /etc/vmmon/agent.token (not shipped).
A=$(stage vmmon-agent)
install -m 0644 packaging/agent.example.toml "$A/etc/vmmon/agent.toml"
install -d -m 0700 "$A/var/lib/vmmon"
control "$A" vmmon-agent "vmmon guest agent: per-process and VM monitoring reported to a vmmon collector" "libc6"
scripts "$A" vmmon-agent "/var/lib/vmmon /etc/vmmon/agent.token"
dpkg-deb --root-owner-group -Zxz --build "$A" "$OUT/vmmon-agent_${VERSION}_${ARCH}.deb" >/dev/null

# Collector: store in /var/lib/vmmon-collector, owned by the vmmon system user.
C=$(stage vmmon-collector)
install -m 0644 packaging/collector.example.toml "$C/etc/vmmon/collector.toml"
install -d -m 0700 "$C/var/lib/vmmon-collector"
control "$C" vmmon-collector "vmmon collector: stores agent reports and serves the operator APIs" "libc6, adduser"
scripts "$C" vmmon-collector "/var/lib/vmmon-collector"
# The state directory belongs to the service user (set at install time).
sed -i 's|^  if \[ -d /run/systemd/system \]; then systemctl daemon-reload|  chown vmmon:vmmon /var/lib/vmmon-collector \&\& chmod 0700 /var/lib/vmmon-collector\n  if [ -d /run/systemd/system ]; then systemctl daemon-reload|' "$C/DEBIAN/postinst"
dpkg-deb --root-owner-group -Zxz --build "$C" "$OUT/vmmon-collector_${VERSION}_${ARCH}.deb" >/dev/null

rm -rf "$A" "$C"
ls -1 "$OUT"/*.deb
