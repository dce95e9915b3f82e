#!/bin/bash
# Tests/guest/run-posix-suite.sh: the POSIX suite in a real guest, on its own ext4 and on a 9P share
# over TCP, compared case by case.
#
# Boots Debian's kernel under QEMU TCG with the POSIX test initramfs. The guest loop-mounts an
# empty ext4 image of its own on /local and mounts the share with
#   mount -t 9p -o trans=tcp,port=PORT,version=9p2000.L,aname=VM 10.0.2.2 /mnt
# (Linux's defaults otherwise: access=client, cache=none), runs posix/pvfs-posix-suite.c once in
# each, and prints both results; posix-compare.sh then compares them case by case. The run fails
# on any case where the share differs from ext4, except those posix/known-differences lists
# (each with its reason; docs/access.md explains them).
#
# usage: run-posix-suite.sh [OPTIONS]
#   --server pvfsd|diod   the server (default pvfsd; diod serves a fresh directory, as a reference)
#   --store DIR --vm NAME pvfsd: serve this VM of this store (it must be bound so that
#                         127.0.0.1 reaches it). Default: a fresh store in the work directory with
#                         the tiny template (scripts/lib/make-tiny-tree.sh) and a VM "posix" bound to 127.0.0.1
#   --port N              TCP port (default: a free one between 20000 and 40000)
#   --quick               the smaller matrices (pvfs-posix-suite -q)
#   --msize N             9P msize (default 262144)
#   --opts O              extra mount options
#   --known FILE          expected differences (default posix/known-differences)
#   --save DIR            keep both result lists and the differences there
#   --timeout S           bound on the guest run (default 900)
#   --log FILE            keep the guest's serial log there
# Binaries: PVFSD, PVFS_VM_BIN (else the newest .build/{release,debug} builds); pvfs-template is
# taken from beside pvfs-vm.
# exit status: 0 the share behaved as ext4 in every case (known differences aside), 1 a case
# differed or the guest did not finish, 2 setup error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KIND=pvfsd STORE="" VM="" PORT="" QUICK="" MSIZE=262144 OPTS="" KNOWN="" SAVE="" TIMEOUT=900 KEEPLOG=""
while [ $# -gt 0 ]; do
    case $1 in
    --server) KIND=$2; shift 2 ;;
    --store) STORE=$2; shift 2 ;;
    --vm) VM=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --msize) MSIZE=$2; shift 2 ;;
    --opts) OPTS=$2; shift 2 ;;
    --known) KNOWN=$2; shift 2 ;;
    --save) SAVE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --log) KEEPLOG=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1" ;;
    esac
done

guest_setup
T0=$(now)
KERNEL=$(guest_kernel)
KVER=$(guest_kver "$KERNEL")
INITRD=$(guest_test_initramfs "$KVER" tcp posix)
T_BUILD=$(elapsed "$T0")

TREE=""
case $KIND in
pvfsd)
    if [ -z "$STORE" ]; then
        [ -z "$VM" ] || gdie "--vm needs --store"
        VMBIN=$(pvfs_vm_binary)
        TEMPLATEBIN=$(dirname "$VMBIN")/pvfs-template
        [ -x "$TEMPLATEBIN" ] || gdie "no pvfs-template beside $VMBIN"
        STORE=$GUEST_WORK/store VM=posix
        "$GUEST_REPO_ROOT/scripts/lib/make-tiny-tree.sh" "$GUEST_WORK/tiny"
        {
            "$TEMPLATEBIN" create tiny --from "$GUEST_WORK/tiny" --store "$STORE" &&
                "$VMBIN" provision --store "$STORE" --template tiny --no-hooks "$VM" &&
                "$VMBIN" bind --store "$STORE" "$VM" --tcp 127.0.0.1
        } >"$GUEST_WORK/setup.log" 2>&1 || { cat "$GUEST_WORK/setup.log" >&2; gdie "store setup failed"; }
        glog "store ready: template tiny, VM $VM bound to 127.0.0.1"
    fi
    [ -n "$VM" ] || gdie "--store needs --vm"
    ANAME=$VM
    ;;
diod)
    TREE=$GUEST_WORK/tree
    mkdir -p "$TREE"
    chmod 755 "$TREE"
    ANAME=$TREE
    ;;
*) gdie "unknown server $KIND" ;;
esac
PORT=${PORT:-$(guest_free_port)}
server_start "$KIND" "$PORT" "$TREE" "$STORE" "$GUEST_WORK/server.log"

APPEND="$GUEST_BASE_APPEND pvfs.run=posix pvfs.trans=tcp pvfs.port=$PORT pvfs.aname=$ANAME pvfs.msize=$MSIZE"
[ -n "$QUICK" ] && APPEND+=" pvfs.posixargs=-q"
[ -n "$OPTS" ] && APPEND+=" pvfs.opts=$OPTS"
LOG=$GUEST_WORK/serial.log
glog "booting: $KERNEL ($KVER), aname=$ANAME port=$PORT"
QRC=0
guest_boot_qemu "$KERNEL" "$INITRD" "$APPEND" "$LOG" "$TIMEOUT" || QRC=$?
[ -n "$KEEPLOG" ] && cp "$LOG" "$KEEPLOG"
server_stop

RC=0
guest_results "$LOG" "posix-9p-tcp/$KIND" || RC=1
COMPARE=("$GUEST_LIB_DIR/posix-compare.sh" --label "posix-9p-tcp/$KIND")
[ -n "$KNOWN" ] && COMPARE+=(--known "$KNOWN")
[ -n "$SAVE" ] && COMPARE+=(--save "$SAVE")
SUMMARY=$("${COMPARE[@]}" "$LOG" | tee -a /dev/stderr | tail -1) || RC=1
[ "$QRC" = 0 ] || RC=1
glog "timings: initramfs ${T_BUILD}s, guest boot+suite ${GUEST_BOOT_SECONDS}s, total $(elapsed "$T0")s"
echo "${SUMMARY:-posix-9p-tcp/$KIND: no comparison} qemu_exit=$QRC boot+suite=${GUEST_BOOT_SECONDS}s"
exit "$RC"
