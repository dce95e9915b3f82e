#!/bin/bash
# Tests/guest/run-9p-tcp.sh: run the guest file-operation checks against a 9P2000.L server over TCP.
#
# Starts a server on 127.0.0.1:PORT, boots Debian's kernel under QEMU TCG with the test
# initramfs (guest-init.sh + fileops.sh), the guest mounts
#   mount -t 9p -o trans=tcp,port=PORT,version=9p2000.L,aname=ANAME 10.0.2.2 /mnt
# runs the checks and powers off; the serial log's PVFS-TEST markers decide the result.
#
# usage:
#   run-9p-tcp.sh [OPTIONS]                       diod serving a fresh empty tree (default)
#   run-9p-tcp.sh --server pvfsd --store S --vm NAME [--quota BYTES]
#   run-9p-tcp.sh [OPTIONS] -- CMD ARGS...         any server; {port} {dir} {store} are substituted
# options:
#   --server diod|pvfsd   which server (see server_command in scripts/lib/guest.sh for the exact command lines)
#   --tree DIR            tree diod serves (default: a fresh empty dir); the checks write under
#                         DIR/pvfs-fileops and the host verifies it afterwards
#   --store DIR           pvfsd store;  --vm NAME: the VM to attach (the aname)
#   --aname NAME          attach name (default: diod = the tree, pvfsd = --vm)
#   --port N              TCP port (default: a free one)
#   --quota BYTES         quota the server enforces for this share: enables the df and EDQUOT checks
#   --quota-fs BYTES      (diod) serve a fresh tmpfs of that size, so df and the write-past-the-limit
#                         check run against a server without quotas (expecting ENOSPC, not EDQUOT)
#   --skip a,b            checks to skip (names as printed, e.g. xattr,permissions)
#   --large MIB           large-file size (default 16)
#   --msize N  --opts O   9P msize / extra mount options
#   --host-view DIR       host path showing the share's contents, for the host-side comparison
#                         (default: the tree for diod; none for pvfsd)
#   --timeout S           bound on the guest run (default 300)
#   --log FILE            keep the guest's serial log there
# exit status: 0 all checks passed, 1 a check failed or the guest did not finish, 2 setup error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

KIND=diod TREE="" STORE="" VM="" ANAME="" PORT="" QUOTA="" QUOTAFS="" QUOTAERR="" SKIP="" LARGE=16 MSIZE="" OPTS=""
HOSTVIEW="" TIMEOUT=300 KEEPLOG=""
while [ $# -gt 0 ]; do
    case $1 in
    --server) KIND=$2; shift 2 ;;
    --tree) TREE=$2; shift 2 ;;
    --store) STORE=$2; shift 2 ;;
    --vm) VM=$2; shift 2 ;;
    --aname) ANAME=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --quota) QUOTA=$2; shift 2 ;;
    --quota-fs) QUOTAFS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --large) LARGE=$2; shift 2 ;;
    --msize) MSIZE=$2; shift 2 ;;
    --opts) OPTS=$2; shift 2 ;;
    --host-view) HOSTVIEW=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --log) KEEPLOG=$2; shift 2 ;;
    --) shift; KIND=custom; SERVER_CUSTOM_ARGV=("$@"); break ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1" ;;
    esac
done

guest_setup
T0=$(now)
KERNEL=$(guest_kernel)
KVER=$(guest_kver "$KERNEL")
INITRD=$(guest_test_initramfs "$KVER" tcp)
T_BUILD=$(elapsed "$T0")

case $KIND in
diod | custom)
    if [ -n "$QUOTAFS" ]; then
        [ -z "$TREE" ] || gdie "--quota-fs and --tree exclude each other"
        TREE=$GUEST_WORK/quotafs
        mkdir -p "$TREE"
        mount -t tmpfs -o "size=$QUOTAFS,mode=755" pvfs-quotafs "$TREE" || gdie "cannot mount a tmpfs (root needed)"
        guest_on_cleanup "umount -l '$TREE'"
        QUOTA=$QUOTAFS QUOTAERR=ENOSPC
    elif [ -z "$TREE" ]; then
        TREE=$GUEST_WORK/tree
        mkdir -p "$TREE"
    fi
    TREE=$(cd "$TREE" && pwd)
    chmod 755 "$TREE" # the non-root checks walk through it
    ANAME=${ANAME:-$TREE}
    HOSTVIEW=${HOSTVIEW:-$TREE}
    ;;
pvfsd)
    [ -n "$STORE" ] && [ -n "$VM" ] || gdie "--server pvfsd needs --store and --vm"
    ANAME=${ANAME:-$VM}
    ;;
*) gdie "unknown server $KIND" ;;
esac
PORT=${PORT:-$(guest_free_port)}

server_start "$KIND" "$PORT" "$TREE" "$STORE" "$GUEST_WORK/server.log"

APPEND="$GUEST_BASE_APPEND pvfs.trans=tcp pvfs.port=$PORT pvfs.aname=$ANAME pvfs.large=$LARGE"
[ -n "$QUOTA" ] && APPEND+=" pvfs.quota=$QUOTA"
[ -n "$QUOTAERR" ] && APPEND+=" pvfs.quotaerr=$QUOTAERR"
[ -n "$SKIP" ] && APPEND+=" pvfs.skip=$SKIP"
[ -n "$MSIZE" ] && APPEND+=" pvfs.msize=$MSIZE"
[ -n "$OPTS" ] && APPEND+=" pvfs.opts=$OPTS"
LOG=$GUEST_WORK/serial.log
glog "booting: $KERNEL ($KVER), aname=$ANAME port=$PORT"
QRC=0
guest_boot_qemu "$KERNEL" "$INITRD" "$APPEND" "$LOG" "$TIMEOUT" || QRC=$?
[ -n "$KEEPLOG" ] && cp "$LOG" "$KEEPLOG"

RC=0
guest_results "$LOG" "9p-tcp/$KIND" || RC=1
server_stop

# Host side: the served tree must hold what the guest wrote.
if [ -n "$HOSTVIEW" ] && [ -f "$HOSTVIEW/pvfs-fileops/MANIFEST" ] && [ ! -s "$HOSTVIEW/pvfs-fileops/MANIFEST" ]; then
    glog "host check: manifest empty (the checks that write it were skipped)"
elif [ -n "$HOSTVIEW" ]; then
    guest_host_check "$HOSTVIEW" || RC=1
fi

glog "timings: initramfs ${T_BUILD}s, guest boot+test ${GUEST_BOOT_SECONDS}s, total $(elapsed "$T0")s"
echo "9p-tcp/$KIND: $GUEST_RESULT_SUMMARY qemu_exit=$QRC boot+test=${GUEST_BOOT_SECONDS}s"
[ "$QRC" = 0 ] || RC=1
exit "$RC"
