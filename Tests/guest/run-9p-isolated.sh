#!/bin/bash
# Tests/guest/run-9p-isolated.sh: a QEMU guest on user networking reaches its own VM and no other.
#
# On QEMU's user networking (slirp) a guest reaches every port of the host's 127.0.0.1 as
# 10.0.2.2, so a listener per VM does not keep guests apart. This script provisions two VMs in a
# fresh store, web1 bound to a Unix socket listener and web2 to a TCP listener of the same
# pvfsd, and boots a guest with the network options `pvfs-vm qemu-args web1` prints
# (restrict=on, guestfwd to web1's socket through `pvfs-vm socket-bridge`). The guest mounts
# web1 at 10.0.2.100:564, runs the file checks on it, and tries to mount web2 through
# 10.0.2.2:PORT: that must fail. With --control the same guest runs without restrict=on, and
# the attempt must succeed (the hole the options close).
#
# usage: run-9p-isolated.sh [--control] [--large MIB] [--skip a,b] [--timeout S]
# exit status: 0 all checks passed, 1 a check failed or the guest did not finish, 2 setup error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CONTROL=0 LARGE=4 SKIP="" TIMEOUT=400
while [ $# -gt 0 ]; do
    case $1 in
    --control) CONTROL=1; shift ;;
    --large) LARGE=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1" ;;
    esac
done

guest_setup
T0=$(now)
KERNEL=$(guest_kernel)
KVER=$(guest_kver "$KERNEL")
INITRD=$(guest_test_initramfs "$KVER" tcp)
PVFSD=$(pvfsd_binary)
PVFS_VM=$(pvfs_vm_binary)
PVFS_TEMPLATE=$(dirname "$PVFS_VM")/pvfs-template
[ -x "$PVFS_TEMPLATE" ] || gdie "no pvfs-template beside $PVFS_VM"

# A store with two VMs of a tiny template, each bound to a listener of its own.
STORE=$GUEST_WORK/store
mkdir -p "$GUEST_WORK/src/etc"
echo isolated >"$GUEST_WORK/src/etc/hostname"
"$PVFS_TEMPLATE" create tiny --from "$GUEST_WORK/src" --store "$STORE" --quiet >/dev/null
for vm in web1 web2; do
    "$PVFS_VM" provision --template tiny "$vm" --no-hooks --store "$STORE" --quiet >/dev/null
done
"$PVFS_VM" bind web1 --listener web1-sock --store "$STORE" >/dev/null
"$PVFS_VM" bind web2 --listener web2-port --store "$STORE" >/dev/null
PORT2=$(guest_free_port)
SOCKET=$GUEST_WORK/web1.9p
CONF=$GUEST_WORK/pvfsd.conf
cat >"$CONF" <<EOF
store = $STORE
listen = web1-sock unix:$SOCKET
listen = web2-port tcp:127.0.0.1:$PORT2
EOF
guest_spawn "$GUEST_WORK/server.log" "$PVFSD" --config "$CONF"
SERVER_PID=$GUEST_LAST_PID
guest_wait_port "$PORT2" "$SERVER_PID" || { cat "$GUEST_WORK/server.log" >&2; gdie "pvfsd did not start"; }

# The options under test, exactly as the command prints them.
mapfile -t GUEST_NET_ARGS < <("$PVFS_VM" qemu-args web1 --config "$CONF" --store "$STORE" --json |
    python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["arguments"]))')
[ "${#GUEST_NET_ARGS[@]}" -eq 4 ] || gdie "qemu-args printed ${GUEST_NET_ARGS[*]}"
EXPECT=unreachable
if [ "$CONTROL" = 1 ]; then
    GUEST_NET_ARGS[1]=${GUEST_NET_ARGS[1]/,restrict=on/}
    EXPECT=reachable
fi
glog "network: ${GUEST_NET_ARGS[*]}"

APPEND="$GUEST_BASE_APPEND pvfs.trans=tcp pvfs.server=10.0.2.100 pvfs.port=564 pvfs.aname=web1 pvfs.large=$LARGE"
APPEND+=" pvfs.probe=10.0.2.2:$PORT2:web2 pvfs.probeexpect=$EXPECT"
[ -n "$SKIP" ] && APPEND+=" pvfs.skip=$SKIP"
LOG=$GUEST_WORK/serial.log
QRC=0
guest_boot_qemu "$KERNEL" "$INITRD" "$APPEND" "$LOG" "$TIMEOUT" || QRC=$?

RC=0
LABEL=9p-isolated
[ "$CONTROL" = 1 ] && LABEL=9p-unrestricted
guest_results "$LOG" "$LABEL" || RC=1
guest_markers "$LOG" | grep -q '^PVFS-TEST probe ok' || { glog "no passing probe marker"; RC=1; }
server_stop

glog "timings: guest boot+test ${GUEST_BOOT_SECONDS}s, total $(elapsed "$T0")s"
echo "$LABEL: $GUEST_RESULT_SUMMARY qemu_exit=$QRC boot+test=${GUEST_BOOT_SECONDS}s"
[ "$QRC" = 0 ] || RC=1
exit "$RC"
