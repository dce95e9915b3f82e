#!/bin/bash
# Tests/guest/run-virtiofs.sh: run the guest file-operation checks over virtio-fs.
#
# Starts a vhost-user-fs backend on a Unix socket, boots Debian's kernel under QEMU TCG with guest
# memory shared through a memfd and a vhost-user-fs-pci device (no network at all), the guest
#   mount -t virtiofs pvfs /mnt
# runs fileops.sh and powers off; the serial log's PVFS-TEST markers decide the result.
#
# usage:
#   run-virtiofs.sh [OPTIONS]                         pvfs (`pvfs-vm serve-vhost-user`) serving a fresh
#                                                     VM of a tiny template (default)
#   run-virtiofs.sh --store S --vm NAME               pvfs serving that VM
#   run-virtiofs.sh --server pvfsd [--store S --vm NAME] [--daemon-running]
#                                                     pvfsd serving the VM on its vhost-user binding
#                                                     (`pvfs-vm bind VM --vhost-user PATH`; made for
#                                                     the run if the VM has none); QEMU's options come
#                                                     from `pvfs-vm qemu-args --transport virtiofs`.
#                                                     --daemon-running: a pvfsd serves S already
#                                                     (several guests, one daemon); else one is started
#   run-virtiofs.sh --server virtiofsd [--tree DIR]   Debian's C virtiofsd serving a tree
# options:
#   --quota BYTES    (pvfs) the VM's quota: enables the df and EDQUOT checks
#   --skip a,b       checks to skip (names as printed)
#   --large MIB      large-file size (default 16)
#   --cache SECONDS  (pvfs) how long the guest may cache names and attributes (default 1)
#   --timeout S      bound on the guest run (default 300)
#   --log FILE       keep the guest's serial log there
# After the guest ends, the host checks what it wrote: for pvfs through `pvfs-vm mount` of the VM,
# for virtiofsd in the tree.
# exit status: 0 all checks passed, 1 a check failed or the guest did not finish, 2 setup error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KIND=pvfs STORE="" VM="" TREE="" QUOTA="" SKIP="" LARGE=16 CACHE=1 TIMEOUT=300 KEEPLOG="" DAEMON_RUNNING=0
while [ $# -gt 0 ]; do
    case $1 in
    --server) KIND=$2; shift 2 ;;
    --store) STORE=$2; shift 2 ;;
    --vm) VM=$2; shift 2 ;;
    --tree) TREE=$2; shift 2 ;;
    --quota) QUOTA=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --large) LARGE=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --log) KEEPLOG=$2; shift 2 ;;
    --daemon-running) DAEMON_RUNNING=1; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1" ;;
    esac
done

guest_setup
T0=$(now)
KERNEL=$(guest_kernel)
KVER=$(guest_kver "$KERNEL")
INITRD=$(guest_test_initramfs "$KVER" virtiofs)
T_BUILD=$(elapsed "$T0")
SOCKET=$GUEST_WORK/vhost.sock
PVFS_VM=$(pvfs_vm_binary)

QEMU_FS_ARGS=(-object "memory-backend-memfd,id=mem,size=${GUEST_MEM}M,share=on" -numa node,memdev=mem
    -chardev "socket,id=vfs,path=$SOCKET" -device vhost-user-fs-pci,chardev=vfs,tag=pvfs)
case $KIND in
pvfs | pvfsd)
    if [ -z "$STORE" ]; then
        STORE=$GUEST_WORK/store VM=vm1
        "$GUEST_REPO_ROOT/scripts/lib/make-tiny-tree.sh" "$GUEST_WORK/tree"
        "$(dirname "$PVFS_VM")/pvfs-template" create tiny --from "$GUEST_WORK/tree" --store "$STORE" >/dev/null
        "$PVFS_VM" provision --store "$STORE" --template tiny "$VM" >/dev/null 2>&1
    fi
    [ -n "$VM" ] || gdie "--store needs --vm"
    if [ -n "$QUOTA" ]; then "$PVFS_VM" set-quota --store "$STORE" "$VM" --bytes "$QUOTA" >/dev/null; fi
    if [ "$KIND" = pvfs ]; then
        glog "server: $PVFS_VM serve-vhost-user --store $STORE $VM --socket $SOCKET --cache-timeout $CACHE"
        guest_spawn "$GUEST_WORK/server.log" "$PVFS_VM" serve-vhost-user --store "$STORE" "$VM" --socket "$SOCKET" --cache-timeout "$CACHE"
    else
        if [ "$DAEMON_RUNNING" = 1 ]; then
            [ -S "$STORE/pvfsd.sock" ] || gdie "--daemon-running: no pvfsd control socket in $STORE"
        else
            PVFSD_BIN=$(pvfsd_binary)
            glog "server: $PVFSD_BIN --store $STORE"
            guest_spawn "$GUEST_WORK/server.log" "$PVFSD_BIN" --store "$STORE" --log-level notice
            for _ in $(seq 1 100); do [ -S "$STORE/pvfsd.sock" ] && break; sleep 0.1; done
            [ -S "$STORE/pvfsd.sock" ] || { cat "$GUEST_WORK/server.log" >&2; gdie "pvfsd did not start"; }
        fi
        # The VM's own vhost-user socket, or one bound for this run (pvfsd listens at once).
        if ! "$PVFS_VM" qemu-args --store "$STORE" "$VM" --transport virtiofs --json >/dev/null 2>&1; then
            "$PVFS_VM" bind --store "$STORE" "$VM" --vhost-user "$SOCKET" >/dev/null
            guest_on_cleanup "'$PVFS_VM' unbind --store '$STORE' '$VM' --vhost-user '$SOCKET' >/dev/null 2>&1"
        fi
        mapfile -t QEMU_FS_ARGS < <("$PVFS_VM" qemu-args --store "$STORE" "$VM" --transport virtiofs --memory "${GUEST_MEM}M" \
            --tag pvfs --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["socket"]); print("\n".join(r["arguments"]))')
        SOCKET=${QEMU_FS_ARGS[0]}
        QEMU_FS_ARGS=("${QEMU_FS_ARGS[@]:1}")
        glog "pvfsd serves VM $VM on $SOCKET: ${QEMU_FS_ARGS[*]}"
    fi
    ;;
virtiofsd)
    [ -x /usr/lib/qemu/virtiofsd ] || gdie "no /usr/lib/qemu/virtiofsd (Debian's qemu-system-common)"
    if [ -z "$TREE" ]; then TREE=$GUEST_WORK/tree; mkdir -p "$TREE"; fi
    TREE=$(cd "$TREE" && pwd)
    chmod 755 "$TREE"
    glog "server: virtiofsd $(/usr/lib/qemu/virtiofsd --version 2>&1 | head -1) on $TREE"
    guest_spawn "$GUEST_WORK/server.log" /usr/lib/qemu/virtiofsd --socket-path="$SOCKET" -o source="$TREE" -o cache=auto -o xattr
    ;;
*) gdie "unknown server $KIND" ;;
esac
SERVER_PID=${GUEST_LAST_PID:-}
[ "$DAEMON_RUNNING" = 1 ] && SERVER_PID=""
for _ in $(seq 1 100); do [ -S "$SOCKET" ] && break; [ -z "$SERVER_PID" ] || kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
[ -S "$SOCKET" ] || { cat "$GUEST_WORK/server.log" >&2 2>/dev/null; gdie "the server did not create $SOCKET"; }

GUEST_NET_ARGS=()
# no_timer_check: TCG guests booting side by side on a busy host fail Linux's IO-APIC timer
# check (a panic, or a hang before /init); KVM guests skip it the same way.
APPEND="$GUEST_BASE_APPEND no_timer_check pvfs.trans=virtiofs pvfs.tag=pvfs pvfs.large=$LARGE"
[ -n "$QUOTA" ] && APPEND+=" pvfs.quota=$QUOTA"
[ -n "$SKIP" ] && APPEND+=" pvfs.skip=$SKIP"
LOG=$GUEST_WORK/serial.log
glog "booting: $KERNEL ($KVER) with vhost-user-fs on $SOCKET"
QRC=0
guest_boot_qemu "$KERNEL" "$INITRD" "$APPEND" "$LOG" "$TIMEOUT" "${QEMU_FS_ARGS[@]}" || QRC=$?
[ -n "$KEEPLOG" ] && cp "$LOG" "$KEEPLOG"

RC=0
guest_results "$LOG" "virtiofs/$KIND" || RC=1
server_stop

# Host side: what the guest wrote is in the VM (seen through a host mount) or the tree.
HOSTVIEW=$TREE
if [ "$KIND" != virtiofsd ]; then
    HOSTVIEW=$GUEST_WORK/view
    mkdir -p "$HOSTVIEW"
    "$PVFS_VM" mount --store "$STORE" "$VM" "$HOSTVIEW" || gdie "cannot mount $VM on the host"
    guest_on_cleanup "'$PVFS_VM' umount --store '$STORE' '$HOSTVIEW' >/dev/null 2>&1 || umount -l '$HOSTVIEW'"
fi
guest_host_check "$HOSTVIEW" || RC=1

glog "timings: initramfs ${T_BUILD}s, guest boot+test ${GUEST_BOOT_SECONDS}s, total $(elapsed "$T0")s"
echo "virtiofs/$KIND: $GUEST_RESULT_SUMMARY qemu_exit=$QRC boot+test=${GUEST_BOOT_SECONDS}s"
[ "$QRC" = 0 ] || RC=1
exit "$RC"
