#!/usr/bin/env bash
# Builds a minimal Debian (bookworm) root with debootstrap, installs the vmmon-agent .deb into it
# offline (dpkg inside a chroot, no network), and configures it to report to a collector on the
# host through qemu's user-mode network (the host's 127.0.0.1 is 10.0.2.2 from the guest).
#
#   packaging/vm-image/build-image.sh install  WORKDIR TOKEN PORT   # root dir + offline install + checks (CI)
#   WITH_KERNEL=1 packaging/vm-image/build-image.sh install …       # the same with a kernel, for booting
#   packaging/vm-image/build-image.sh disk     WORKDIR              # ext4 disk image + kernel for qemu
#
# Needs root, debootstrap, and for `disk` e2fsprogs (mke2fs -d). Packages come from Debian's
# mirror; the agent comes only from target/packages/vmmon-agent_*_amd64.deb (build-packages.sh:
# the static binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:?install|disk}
WORK=${2:?workdir}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT="$WORK/root"
DEB=$(ls target/packages/vmmon-agent_*_"$(dpkg --print-architecture)".deb | head -n 1)
mkdir -p "$WORK"

base() {
  local extra="systemd-sysv,udev,iproute2,ca-certificates"
  local marker="$ROOT/.debootstrapped"
  if [ "${WITH_KERNEL:-0}" = 1 ]; then
    extra="$extra,linux-image-amd64,initramfs-tools"
    marker="$marker-kernel"
  fi
  if [ ! -f "$marker" ]; then
    rm -rf "$ROOT"
    debootstrap --variant=minbase --include="$extra" bookworm "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
      || { tail -n 30 "$WORK/debootstrap.log"; exit 1; }
    touch "$marker"
  fi
}

install_agent() {
  local token=$1 port=$2
  cp "$DEB" "$ROOT/tmp/vmmon-agent.deb"
  # Offline: dpkg only, from the copied file; the network is never touched.
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg -i /tmp/vmmon-agent.deb
  rm -f "$ROOT/tmp/vmmon-agent.deb"
  install -m 0600 /dev/null "$ROOT/etc/vmmon/agent.token"
  printf '%s\n' "$token" >"$ROOT/etc/vmmon/agent.token"
  sed -i "s|^collector = .*|collector = \"ws://10.0.2.2:$port/rpc\"|; s|^interval_secs = .*|interval_secs = 5|" "$ROOT/etc/vmmon/agent.toml"
  # Idempotent on a reused image root: the lines this adds are removed first.
  sed -i '/^instance_id = /d; /^allow_plaintext = /d' "$ROOT/etc/vmmon/agent.toml"
  echo 'instance_id = "qemu-demo-vm"' >>"$ROOT/etc/vmmon/agent.toml"
  # 10.0.2.2 is the host's loopback seen through qemu's user-mode network, not a real network.
  echo 'allow_plaintext = true' >>"$ROOT/etc/vmmon/agent.toml"
  echo "qemu-demo-vm" >"$ROOT/etc/hostname"
  # DHCP on the first virtio NIC via systemd-networkd.
  mkdir -p "$ROOT/etc/systemd/network"
  printf '[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n' >"$ROOT/etc/systemd/network/50-dhcp.network"
  chroot "$ROOT" systemctl enable systemd-networkd >/dev/null 2>&1
  # Log in on the serial console without a password (a throwaway test image).
  chroot "$ROOT" passwd -d root >/dev/null
  # Checks: what the image will run at boot.
  test -x "$ROOT/usr/bin/vmmon-agent" || { echo "agent binary missing"; exit 1; }
  test -L "$ROOT/etc/systemd/system/multi-user.target.wants/vmmon-agent.service" || { echo "agent not enabled"; exit 1; }
  chroot "$ROOT" /usr/bin/vmmon-agent --config /etc/vmmon/agent.toml --check-config
  chroot "$ROOT" dpkg-query -W -f='${Package} ${Version} ${Status}\n' vmmon-agent
}

case "$MODE" in
  install)
    TOKEN=${3:?token} PORT=${4:?port}
    base
    install_agent "$TOKEN" "$PORT"
    echo "image root ready: $ROOT (vmmon-agent installed offline and enabled)"
    ;;
  disk)
    [ -f "$ROOT/etc/vmmon/agent.toml" ] && ls "$ROOT"/boot/vmlinuz-* >/dev/null 2>&1 \
      || { echo "run 'WITH_KERNEL=1 … install' first"; exit 1; }
    cp "$ROOT"/boot/vmlinuz-* "$WORK/vmlinuz"
    cp "$ROOT"/boot/initrd.img-* "$WORK/initrd.img"
    echo "/dev/vda / ext4 defaults 0 1" >"$ROOT/etc/fstab"
    rm -f "$WORK/disk.img"
    mke2fs -q -t ext4 -L vmmonroot -d "$ROOT" "$WORK/disk.img" 2G
    echo "disk image ready: $WORK/disk.img (kernel $WORK/vmlinuz)"
    ;;
  *) echo "unknown mode $MODE"; exit 2 ;;
esac
