#!/bin/bash
# Boots a Linux guest under QEMU (TCG) whose init mounts a 9P server on the host's
# 127.0.0.1:PORT (reached as 10.0.2.2 through user-mode networking) with aname ANAME, runs
# the checks of init.sh, and powers off. The serial console goes to OUT_DIR/console.log.
#
#   scripts/guest-9p/run.sh PORT ANAME OUT_DIR [TIMEOUT_SECONDS] [MOUNT_OPTIONS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
port=$1 aname=$2 out=$3 limit=${4:-300} extra=${5:-}
mkdir -p "$out"
"$here/build-initramfs.sh" "$out"
timeout "$limit" qemu-system-x86_64 -accel tcg -cpu max -m 768 -smp 1 -nographic -no-reboot -monitor none \
  -kernel "$out/kernel" -initrd "$out/initrd.gz" \
  -append "console=ttyS0 panic=-1 quiet no_timer_check p9port=$port p9aname=$aname p9opts=$extra" \
  -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
  > "$out/console.log" 2>&1 < /dev/null
