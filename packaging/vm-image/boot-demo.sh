#!/usr/bin/env bash
# The whole demonstration: builds the .deb, a Debian image with the agent installed offline,
# starts a collector on the host, boots the image under qemu (software emulation, user-mode
# network), and waits until the agent inside has registered and reported; then prints what the
# collector knows about the VM (611611 and the top processes via 611711).
# Needs root, debootstrap, qemu-system-x86, e2fsprogs. Takes a few minutes without KVM.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-target/vm-image}
PORT=${PORT:-18086}
mkdir -p "$WORK"
[ "${NO_BUILD:-0}" = 1 ] || packaging/build-packages.sh >/dev/null
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release -q -p vmmon-collector

DATA="$WORK/collector-data"
rm -rf "$DATA"
VMMON_ADMIN_PASSWORD=demo-admin target/release/vmmon-collector serve --listen 127.0.0.1:$PORT --data "$DATA" \
  >"$WORK/collector.out" 2>"$WORK/collector.log" &
CPID=$!
QPID=
cleanup() { kill $CPID 2>/dev/null || true; [ -n "$QPID" ] && kill $QPID 2>/dev/null || true; }
trap cleanup EXIT
until grep -q listening "$WORK/collector.out" 2>/dev/null; do sleep 0.2; done
TOKEN=$(target/release/vmmon-collector token create --data "$DATA" --project demo --region qemu | tail -n 1)

WITH_KERNEL=1 packaging/vm-image/build-image.sh install "$WORK" "$TOKEN" "$PORT"
packaging/vm-image/build-image.sh disk "$WORK"

# Software emulation by default (nested KVM here rejects the guest's MSRs); VMMON_QEMU_KVM=1 to try KVM.
ACCEL=tcg CPU=max
[ "${VMMON_QEMU_KVM:-0}" = 1 ] && [ -w /dev/kvm ] && ACCEL=kvm CPU=host
qemu-system-x86_64 -machine pc,accel=$ACCEL -cpu $CPU -m 1024 -smp 2 -nographic -no-reboot \
  -kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.show_status=1" \
  -drive file="$WORK/disk.img",format=raw,if=virtio \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0 >"$WORK/console.log" 2>&1 </dev/null &
QPID=$!
echo "booting the image (console: $WORK/console.log)…"

api() { curl -s -X POST "http://127.0.0.1:$PORT/wsgi_app.py" -d "$1"; }
SID=$(api '{"method":458753,"data":{"user_name":"admin","password":"demo-admin"}}' | sed -n 's/.*"session_id":"\([^"]*\)".*/\1/p')
ID=qemu-demo-vm
for _ in $(seq 1 120); do
  api "{\"method\":611611,\"data\":{\"instance_id\":\"$ID\"},\"session_id\":\"$SID\"}" | grep -q '"proc"' && break
  kill -0 $QPID 2>/dev/null || { echo "qemu exited; see $WORK/console.log"; exit 1; }
  sleep 5
done
api "{\"method\":611611,\"data\":{\"instance_id\":\"$ID\"},\"session_id\":\"$SID\"}" | grep -q '"proc"' \
  || { echo "the agent in the VM did not report; see $WORK/console.log"; exit 1; }
echo "agent inside the VM registered and reports as instance $ID"
echo "--- startmonitor"
api "{\"method\":32523,\"data\":{\"instance_id\":\"$ID\"},\"session_id\":\"$SID\"}"; echo
sleep 12
echo "--- 611611 (VM record from inside the guest)"
api "{\"method\":611611,\"data\":{\"instance_id\":\"$ID\"},\"session_id\":\"$SID\"}"; echo
echo "--- 611711 (top 5 processes inside the guest)"
api "{\"method\":611711,\"data\":{\"instance_id\":\"$ID\"},\"session_id\":\"$SID\",\"limit\":5}"; echo
