#!/usr/bin/env bash
# The one packaging command. Builds into target/packages/:
#
#   vmmon-agent-x86_64, vmmon-agent-aarch64      static (musl) agent binaries, stripped
#   vmmon-agent_<v>_amd64.deb, _arm64.deb         the agent, carrying the static binary
#   vmmon-agent-<v>-1.x86_64.rpm, .aarch64.rpm
#   vmmon-collector_<v>_amd64.deb, vmmon-collector-<v>-1.x86_64.rpm   (host glibc build)
#   debug/<name>.debug                            the split-off debug info (line tables)
#
# Each package has the systemd unit, the default config as a conffile / %config(noreplace), the
# /etc/default file, the state directory, and scriptlets: enable on install, stop and disable on
# remove, config and state kept on upgrade, purge (.deb) removes the state.
#
# Installs what it needs when missing (idempotent; apt only then): the Rust musl targets, a C
# cross compiler and binutils for aarch64 (ring, in the agent's TLS stack, has C and assembly),
# rpmbuild. Usage: packaging/build-packages.sh [--no-build]   (--no-build packages existing builds)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
RELEASE=1
OUT=target/packages
BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0

# --- tools --------------------------------------------------------------------------------------
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-objcopy >/dev/null || need+=(binutils-aarch64-linux-gnu)
command -v musl-gcc >/dev/null || need+=(musl-tools)
command -v rpmbuild >/dev/null || need+=(rpm)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v objcopy >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
  echo "build-packages: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "$BUILD" = 1 ]; then
  installed=$(rustup target list --installed)
  for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
  done
fi

# --- binaries -----------------------------------------------------------------------------------
# musl targets link statically by default (crt-static); Rust ships musl's libc and crt objects
# (self-contained), so the GNU cross gcc serves as linker and as C compiler for ring.
export CC_x86_64_unknown_linux_musl=musl-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_musl=aarch64-linux-gnu-ar
if [ "$BUILD" = 1 ]; then
  cargo build --release -q -p vmmon-agent --bin vmmon-agent --target x86_64-unknown-linux-musl
  cargo build --release -q -p vmmon-agent --bin vmmon-agent --target aarch64-unknown-linux-musl
  cargo build --release -q -p vmmon-collector --bin vmmon-collector
fi
rm -rf "$OUT"
mkdir -p "$OUT/debug"

# ship SRC DEST OBJCOPY: DEST = SRC stripped, debug info in debug/<name>.debug (linked by name
# and CRC, so gdb and addr2line find it).
ship() {
  local src=$1 dest=$2 objcopy=$3 dbg
  dbg="$OUT/debug/$(basename "$dest").debug"
  "$objcopy" --only-keep-debug "$src" "$dbg"
  "$objcopy" --strip-debug --strip-unneeded "$src" "$dest"
  "$objcopy" --add-gnu-debuglink="$dbg" "$dest"
  chmod 0755 "$dest"
}
ship target/x86_64-unknown-linux-musl/release/vmmon-agent "$OUT/vmmon-agent-x86_64" objcopy
ship target/aarch64-unknown-linux-musl/release/vmmon-agent "$OUT/vmmon-agent-aarch64" aarch64-linux-gnu-objcopy
ship target/release/vmmon-collector "$OUT/vmmon-collector-x86_64" objcopy
# Static: no program interpreter, no shared libraries (readelf reads either architecture).
for b in "$OUT"/vmmon-agent-x86_64 "$OUT"/vmmon-agent-aarch64; do
  if readelf -lW "$b" | grep -q "program interpreter" || readelf -dW "$b" | grep -q "(NEEDED)"; then
    echo "build-packages: $b is not a static binary" >&2
    exit 1
  fi
done

# --- the file tree both package formats install ------------------------------------------------
# tree DIR NAME BINARY: /usr/bin, the unit, /etc/default, the example config, the state dir.
tree() {
  local dir=$1 name=$2 bin=$3
  install -d "$dir/usr/bin" "$dir/lib/systemd/system" "$dir/etc/vmmon" "$dir/etc/default" \
    "$dir/usr/share/doc/$name"
  install -m 0755 "$bin" "$dir/usr/bin/$name"
  install -m 0644 "systemd/$name.service" "$dir/lib/systemd/system/$name.service"
  install -m 0644 "systemd/$name.default" "$dir/etc/default/$name"
  install -m 0644 README.md "$dir/usr/share/doc/$name/README.md"
  case $name in
    vmmon-agent)
      install -m 0644 packaging/agent.example.toml "$dir/etc/vmmon/agent.toml"
      install -d -m 0700 "$dir/var/lib/vmmon" ;;
    vmmon-collector)
      install -m 0644 packaging/collector.example.toml "$dir/etc/vmmon/collector.toml"
      install -d -m 0700 "$dir/var/lib/vmmon-collector" ;;
  esac
}

# --- .deb -----------------------------------------------------------------------------------------
# deb NAME DEBARCH BINARY DESCRIPTION DEPENDS
deb() {
  local name=$1 arch=$2 bin=$3 desc=$4 depends=$5 dir state purge
  dir=$(mktemp -d)
  chmod 0755 "$dir"
  tree "$dir" "$name" "$bin"
  install -d "$dir/DEBIAN"
  case $name in
    vmmon-agent) state=/var/lib/vmmon; purge="/var/lib/vmmon /etc/vmmon/agent.token" ;;
    *) state=/var/lib/vmmon-collector; purge=/var/lib/vmmon-collector ;;
  esac
  {
    echo "Package: $name"
    echo "Version: $VERSION"
    echo "Architecture: $arch"
    echo "Maintainer: vmmon developers <vmmon@localhost>"
    echo "Section: admin"
    echo "Priority: optional"
    [ -n "$depends" ] && echo "Depends: $depends"
    echo "Description: $desc"
  } >"$dir/DEBIAN/control"
  (cd "$dir" && find etc -type f | sed 's|^|/|' | sort) >"$dir/DEBIAN/conffiles"
  cat >"$dir/DEBIAN/postinst" <<SH
#!/bin/sh
set -e
if [ "\$1" = "configure" ]; then
  $([ "$name" = vmmon-collector ] && echo "getent passwd vmmon >/dev/null || adduser --system --group --home $state --no-create-home vmmon >/dev/null
  chown vmmon:vmmon $state && chmod 0700 $state")
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
  dpkg-deb --root-owner-group -Zxz --build "$dir" "$OUT/${name}_${VERSION}_${arch}.deb" >/dev/null
  rm -rf "$dir"
}

deb vmmon-agent amd64 "$OUT/vmmon-agent-x86_64" \
  "vmmon guest agent: per-process and VM monitoring reported to a vmmon collector (static binary)" ""
deb vmmon-agent arm64 "$OUT/vmmon-agent-aarch64" \
  "vmmon guest agent: per-process and VM monitoring reported to a vmmon collector (static binary)" ""
deb vmmon-collector amd64 "$OUT/vmmon-collector-x86_64" \
  "vmmon collector: stores agent reports and serves the operator APIs" "libc6 (>= 2.34), adduser"

# --- .rpm -----------------------------------------------------------------------------------------
# rpm NAME RPMARCH BINARY SUMMARY: a binary-only spec over the staged tree (no %build; rpmbuild's
# own strip and debuginfo steps are off: the binary is already split and stripped, and the host
# strip cannot read an aarch64 binary).
rpm_pkg() {
  local name=$1 arch=$2 bin=$3 summary=$4 top spec state config pre="" files
  top=$(mktemp -d)
  mkdir -p "$top"/{BUILD,BUILDROOT,RPMS,SOURCES,SPECS,SRPMS,stage}
  tree "$top/stage" "$name" "$bin"
  case $name in
    vmmon-agent) state=/var/lib/vmmon; config=/etc/vmmon/agent.toml ;;
    *) state=/var/lib/vmmon-collector; config=/etc/vmmon/collector.toml
       pre="%pre
getent group vmmon >/dev/null || groupadd -r vmmon
getent passwd vmmon >/dev/null || useradd -r -g vmmon -d $state -s /sbin/nologin -c 'vmmon collector' vmmon
exit 0" ;;
  esac
  files="%attr(0755,root,root) /usr/bin/$name
%attr(0644,root,root) /lib/systemd/system/$name.service
%dir %attr(0755,root,root) /etc/vmmon
%config(noreplace) %attr(0644,root,root) $config
%config(noreplace) %attr(0644,root,root) /etc/default/$name
%doc %attr(0644,root,root) /usr/share/doc/$name/README.md"
  if [ "$name" = vmmon-collector ]; then
    files="$files
%dir %attr(0700,vmmon,vmmon) $state"
  else
    files="$files
%dir %attr(0700,root,root) $state"
  fi
  spec="$top/SPECS/$name.spec"
  cat >"$spec" <<SPEC
%global debug_package %{nil}
%global __os_install_post %{nil}
%global _build_id_links none
Name: $name
Version: $VERSION
Release: $RELEASE
Summary: $summary
License: Apache-2.0
URL: https://github.com/vmmon/vmmon
$([ "$name" = vmmon-agent ] && echo "AutoReqProv: no")

%description
$summary.

%install
cp -a $top/stage/. %{buildroot}/

$pre

# \$1: 1 = first install, 2+ = upgrade. Enable on first install only (an operator's disable
# survives upgrades); restart a running service on upgrade.
%post
if [ \$1 -eq 1 ]; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    systemctl enable $name.service >/dev/null 2>&1 || :
  else
    mkdir -p /etc/systemd/system/multi-user.target.wants
    ln -sf /lib/systemd/system/$name.service /etc/systemd/system/multi-user.target.wants/$name.service
  fi
fi
exit 0

# \$1: 0 = removal (stop and disable), 1+ = upgrade (nothing: the new files replace the old).
%preun
if [ \$1 -eq 0 ]; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-reload disable --now $name.service >/dev/null 2>&1 || :
  fi
  rm -f /etc/systemd/system/multi-user.target.wants/$name.service
fi
exit 0

%postun
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload >/dev/null 2>&1 || :
  if [ \$1 -ge 1 ]; then systemctl try-restart $name.service >/dev/null 2>&1 || :; fi
fi
exit 0

%files
$files
SPEC
  rpmbuild -bb --quiet --target "$arch-linux" --define "_topdir $top" "$spec" >"$top/rpmbuild.log" 2>&1 \
    || { cat "$top/rpmbuild.log" >&2; exit 1; }
  cp "$top/RPMS/$arch/$name-$VERSION-$RELEASE.$arch.rpm" "$OUT/"
  rm -rf "$top"
}

rpm_pkg vmmon-agent x86_64 "$OUT/vmmon-agent-x86_64" "vmmon guest agent (static binary)"
rpm_pkg vmmon-agent aarch64 "$OUT/vmmon-agent-aarch64" "vmmon guest agent (static binary)"
rpm_pkg vmmon-collector x86_64 "$OUT/vmmon-collector-x86_64" "vmmon collector"

ls -l "$OUT" | awk 'NR>1 && $1 !~ /^d/ {printf "%10d  %s\n", $5, $9}'
