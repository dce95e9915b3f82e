#!/bin/bash
# Tests/guest/run-9p-fixture.sh: a Linux guest exercises a 9P2000.L server a Swift test runs
# (PVFSTransportTests' LinuxGuestTests: the socket transport serving a fixture VM).
#
# Boots Debian's kernel under QEMU TCG with busybox, 9pnet_fd and fixture-init.sh as /init; the
# guest mounts 127.0.0.1:PORT (10.0.2.2 in the guest) with aname ANAME, runs its checks (files,
# renames, links, devices, xattrs, flock, two sessions of one VM, remount) and powers off. The
# result lines (lib/results.sh) decide the exit status; the serial log stays in
# OUT_DIR/console.log for the test, which then checks through the engine what the guest did.
#
# usage: run-9p-fixture.sh PORT ANAME OUT_DIR [TIMEOUT_SECONDS] [MOUNT_OPTIONS]
# exit status: 0 all checks passed, 1 a check failed or the guest did not finish, 2 setup error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ $# -ge 3 ] || { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
PORT=$1 ANAME=$2 OUT=$3 TIMEOUT=${4:-300} EXTRA=${5:-}
mkdir -p "$OUT"
guest_setup
KERNEL=$(guest_kernel)
KVER=$(guest_kver "$KERNEL")
guest_initramfs_new
guest_initramfs_busybox
# shellcheck disable=SC2086
guest_initramfs_modules "$KVER" $GUEST_MODS_VIRTIO_NET $GUEST_MODS_9P_TCP
for b in /usr/bin/setfattr /usr/bin/getfattr /usr/bin/flock; do [ -x "$b" ] && guest_initramfs_bin "$b"; done
guest_initramfs_text /etc/passwd 0644 $'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n'
guest_initramfs_text /etc/group 0644 $'root:x:0:\nuser:x:1000:\n'
guest_initramfs_file "$GUEST_LIB_DIR/fixture-init.sh" /init 0755
guest_initramfs_results
INITRD=$(guest_initramfs_pack "pvfs-fixture-$KVER")
GUEST_MEM=768
QRC=0
guest_boot_qemu "$KERNEL" "$INITRD" "console=ttyS0 panic=-1 quiet no_timer_check p9port=$PORT p9aname=$ANAME p9opts=$EXTRA" \
    "$OUT/console.log" "$TIMEOUT" || QRC=$?
RC=0
guest_results "$OUT/console.log" "9p-fixture" || RC=1
[ "$QRC" = 0 ] || RC=1
echo "9p-fixture: $GUEST_RESULT_SUMMARY qemu_exit=$QRC"
exit "$RC"
