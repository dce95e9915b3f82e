#!/bin/bash
# Tests/guest/run-9p-upgrade.sh: a Linux guest keeps working on a VM over 9P/TCP while pvfsd is
# upgraded in place several times (`pvfs upgrade`: the running daemon hands its listener and
# the guest's connection, with every fid, open file and lock, to a new process).
#
# The guest (guest-init.sh, pvfs.run=upgrade) loops for --loop-seconds: creates files of
# varied sizes, checksums them, renames them into place, reads them back, unlinks every third,
# appends to a journal it keeps open and holds an unlinked file open. Once it says it has
# started, the host runs `pvfs upgrade` --upgrades times, --interval seconds apart, each time
# checking that the daemon's pid changed. The guest must see no error and every checksum must
# match; afterwards the host checks the store (pvfs fsck).
#
# usage: run-9p-upgrade.sh --store S --vm NAME [--upgrades N] [--interval S] [--loop-seconds S]
#                          [--binary PATH] [--timeout S] [--log FILE]
#   --binary PATH   the pvfsd to upgrade to (default: the running one's own path)
# exit status: 0 the guest saw nothing and every upgrade handed over, 1 otherwise, 2 setup error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

STORE="" VM="" UPGRADES=4 INTERVAL=12 LOOP=75 BINARY="" TIMEOUT=400 KEEPLOG=""
while [ $# -gt 0 ]; do
    case $1 in
    --store) STORE=$2; shift 2 ;;
    --vm) VM=$2; shift 2 ;;
    --upgrades) UPGRADES=$2; shift 2 ;;
    --interval) INTERVAL=$2; shift 2 ;;
    --loop-seconds) LOOP=$2; shift 2 ;;
    --binary) BINARY=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --log) KEEPLOG=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1" ;;
    esac
done
[ -n "$STORE" ] && [ -n "$VM" ] || gdie "--store and --vm are required"

guest_setup
T0=$(now)
KERNEL=$(guest_kernel)
KVER=$(guest_kver "$KERNEL")
INITRD=$(guest_test_initramfs "$KVER" tcp)
PORT=$(guest_free_port)
PVFS=$(dirname "$(pvfsd_binary)")/pvfs
[ -x "$PVFS" ] || gdie "no pvfs binary beside $(pvfsd_binary)"

server_start pvfsd "$PORT" "" "$STORE" "$GUEST_WORK/server.log"
daemon_pid() { "$PVFS" status --json --store "$STORE" | sed -n 's/^ *"pid" *: *\([0-9]*\).*/\1/p' | head -1; }

LOG=$GUEST_WORK/serial.log
APPEND="$GUEST_BASE_APPEND pvfs.trans=tcp pvfs.port=$PORT pvfs.aname=$VM pvfs.run=upgrade pvfs.loopsecs=$LOOP"

# The upgrades, once the guest's loop runs.
(
    for _ in $(seq 1 600); do
        grep -q PVFS-UPGRADE-READY "$LOG" 2>/dev/null && break
        sleep 0.5
    done
    grep -q PVFS-UPGRADE-READY "$LOG" || { echo "UPGRADE fail the guest's loop never started"; exit 0; }
    for i in $(seq 1 "$UPGRADES"); do
        sleep "$INTERVAL"
        before=$(daemon_pid)
        if out=$("$PVFS" upgrade --store "$STORE" ${BINARY:+--binary "$BINARY"} 2>&1); then
            after=$(daemon_pid)
            if [ -n "$after" ] && [ "$after" != "$before" ]; then
                echo "UPGRADE ok $i: pid $before -> $after: $(echo "$out" | tr '\n' ' ')"
            else
                echo "UPGRADE fail $i: pid still $after"
            fi
        else
            echo "UPGRADE fail $i: $(echo "$out" | tr '\n' ' ')"
        fi
    done
) >"$GUEST_WORK/upgrades.log" 2>&1 &
UPGRADER=$!

glog "booting: $KERNEL ($KVER), aname=$VM port=$PORT, $UPGRADES upgrades every ${INTERVAL}s during a ${LOOP}s loop"
QRC=0
guest_boot_qemu "$KERNEL" "$INITRD" "$APPEND" "$LOG" "$TIMEOUT" || QRC=$?
wait "$UPGRADER" || true
[ -n "$KEEPLOG" ] && cp "$LOG" "$KEEPLOG"

RC=0
guest_results "$LOG" "9p-upgrade" || RC=1
cat "$GUEST_WORK/upgrades.log" >&2
ok=$(grep -c '^UPGRADE ok' "$GUEST_WORK/upgrades.log" || true)
[ "$ok" = "$UPGRADES" ] || { glog "only $ok of $UPGRADES upgrades handed over"; RC=1; }

# The server now runs under another pid than the one started: stop that one.
current=$(daemon_pid || true)
if [ -n "$current" ] && [ "$current" -gt 0 ]; then kill "$current" 2>/dev/null || true; fi
for _ in $(seq 1 100); do [ -n "$current" ] && kill -0 "$current" 2>/dev/null || break; sleep 0.1; done
server_stop
if "$PVFS" fsck --store "$STORE" >"$GUEST_WORK/fsck.log" 2>&1; then
    glog "fsck: clean"
else
    cat "$GUEST_WORK/fsck.log" >&2
    RC=1
fi
glog "timings: guest boot+test ${GUEST_BOOT_SECONDS}s, total $(elapsed "$T0")s"
echo "9p-upgrade: $GUEST_RESULT_SUMMARY upgrades=$ok/$UPGRADES qemu_exit=$QRC"
[ "$QRC" = 0 ] || RC=1
exit "$RC"
