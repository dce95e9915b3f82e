#!/bin/bash
# Tests/guest/run-virtiofs-many.sh: many virtio-fs guests of different VMs served by one pvfsd.
#
# Makes a store with a tiny template and N VMs, starts one pvfsd, binds each VM to a vhost-user
# socket of its own (`pvfs-vm bind VM --vhost-user PATH`), then boots N guests at once (each runs
# Tests/guest/run-virtiofs.sh --server pvfsd --daemon-running: fileops.sh and the host check). One
# more guest, of its own VM, has its QEMU killed with SIGKILL while its checks run; afterwards a
# new QEMU on that same socket must pass every check, and pvfsd must still be the same process.
#
# usage: run-virtiofs-many.sh [--guests N] [--no-kill] [--timeout S] [--large MIB]
#   --guests N   guests run at once, besides the killed one (default 3)
#   --no-kill    no killed QEMU, no guest started again
#   --timeout S  bound on each guest run (default 900: TCG guests share the host's cores)
#   --large MIB  large-file size of each guest's checks (default 4)
# Guest memory: PVFS_GUEST_MEM (default here 256 MiB).
# exit status: 0 every guest passed and pvfsd served throughout, 1 otherwise, 2 setup error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

N=3 KILL=1 TIMEOUT=900 LARGE=4
while [ $# -gt 0 ]; do
    case $1 in
    --guests) N=$2; shift 2 ;;
    --no-kill) KILL=0; shift ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --large) LARGE=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1" ;;
    esac
done
export PVFS_GUEST_MEM=${PVFS_GUEST_MEM:-256}

guest_setup
T0=$(now)
PVFS_VM=$(pvfs_vm_binary)
STORE=$GUEST_WORK/store
"$GUEST_REPO_ROOT/scripts/lib/make-tiny-tree.sh" "$GUEST_WORK/tree"
"$(dirname "$PVFS_VM")/pvfs-template" create tiny --from "$GUEST_WORK/tree" --store "$STORE" >/dev/null
VMS=()
for i in $(seq 1 "$N"); do VMS+=("vm$i"); done
[ "$KILL" = 1 ] && VMS+=(victim)
for vm in "${VMS[@]}"; do
    "$PVFS_VM" provision --store "$STORE" --template tiny "$vm" >/dev/null 2>&1
done

PVFSD_BIN=$(pvfsd_binary)
glog "server: $PVFSD_BIN --store $STORE (one daemon for ${#VMS[@]} VMs)"
guest_spawn "$GUEST_WORK/pvfsd.log" "$PVFSD_BIN" --store "$STORE" --log-level notice
PVFSD_PID=$GUEST_LAST_PID
for _ in $(seq 1 100); do [ -S "$STORE/pvfsd.sock" ] && break; sleep 0.1; done
[ -S "$STORE/pvfsd.sock" ] || { cat "$GUEST_WORK/pvfsd.log" >&2; gdie "pvfsd did not start"; }
for vm in "${VMS[@]}"; do
    "$PVFS_VM" bind --store "$STORE" "$vm" --vhost-user "$GUEST_WORK/$vm.vhost" >/dev/null
    [ -S "$GUEST_WORK/$vm.vhost" ] || gdie "pvfsd does not listen on $GUEST_WORK/$vm.vhost after bind"
done

# Builds the shared initramfs once, so the guests below do not all build it at the same time.
KVER=$(guest_kver "$(guest_kernel)")
guest_test_initramfs "$KVER" virtiofs >/dev/null

run_guest() { # VM LABEL
    PVFS_GUEST_KEEP=0 "$GUEST_LIB_DIR/run-virtiofs.sh" --server pvfsd --daemon-running --store "$STORE" --vm "$1" \
        --large "$LARGE" --timeout "$TIMEOUT" --log "$GUEST_WORK/$2.serial" >"$GUEST_WORK/$2.out" 2>&1
}

declare -A PIDS
for vm in "${VMS[@]}"; do
    run_guest "$vm" "$vm" &
    PIDS[$vm]=$!
done
glog "${#VMS[@]} guests booting at once"

RC=0
if [ "$KILL" = 1 ]; then
    # Kill the victim's QEMU once its checks have started (its serial log shows a marker).
    QPID=""
    for _ in $(seq 1 $((TIMEOUT * 2))); do
        if [ -f "$GUEST_WORK/victim.out" ] && grep -aq 'booting:' "$GUEST_WORK/victim.out"; then
            QPID=$(pgrep -f "qemu-system-x86_64 .*path=$GUEST_WORK/victim.vhost" | head -1 || true)
            if [ -n "$QPID" ] && tr -d '\r' <"/proc/$QPID/fd/1" 2>/dev/null | grep -aq 'PVFS-TEST ' 2>/dev/null; then break; fi
        fi
        kill -0 "${PIDS[victim]}" 2>/dev/null || break
        sleep 0.5
    done
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        glog "killing the victim's QEMU (pid $QPID) with SIGKILL mid-run"
        kill -9 "$QPID"
    else
        glog "error: the victim's QEMU was not found running its checks"
        RC=1
    fi
fi

for vm in "${VMS[@]}"; do
    rc=0
    wait "${PIDS[$vm]}" || rc=$?
    line=$(grep -a "^virtiofs/pvfsd:" "$GUEST_WORK/$vm.out" | tail -1 || true)
    if [ "$vm" = victim ]; then
        glog "victim (killed): exit $rc ${line:-(no result line: killed)}"
        continue
    fi
    glog "$vm: exit $rc $line"
    if [ "$rc" != 0 ]; then
        RC=1
        tail -20 "$GUEST_WORK/$vm.out" >&2
    fi
done
T_MANY=$(elapsed "$T0")

if [ "$KILL" = 1 ]; then
    kill -0 "$PVFSD_PID" 2>/dev/null || { glog "error: pvfsd died"; RC=1; }
    glog "a new QEMU on the killed guest's socket"
    rc=0
    run_guest victim victim-again || rc=$?
    glog "victim again: exit $rc $(grep -a '^virtiofs/pvfsd:' "$GUEST_WORK/victim-again.out" | tail -1 || true)"
    [ "$rc" = 0 ] || { RC=1; tail -20 "$GUEST_WORK/victim-again.out" >&2; }
fi
kill -0 "$PVFSD_PID" 2>/dev/null || { glog "error: pvfsd died"; RC=1; }
# RssShmem counts the guests' memory pvfsd has touched through its mappings.
[ -r "/proc/$PVFSD_PID/status" ] && glog "pvfsd memory: $(grep -E '^(VmHWM|RssAnon|RssShmem)' "/proc/$PVFSD_PID/status" | tr -s ' \t\n' ' ')"
if grep -aqiE 'fatal|crash|backtrace' "$GUEST_WORK/pvfsd.log"; then
    glog "error: pvfsd logged a crash"
    RC=1
fi
glog "timings: ${#VMS[@]} guests at once ${T_MANY}s; total $(elapsed "$T0")s"
echo "virtiofs-many: guests=$N killed=$KILL rc=$RC wall=${T_MANY}s"
exit "$RC"
