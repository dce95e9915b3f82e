#!/bin/bash
# bench/9p-vs-diod.sh: pvfsd against diod, as a Linux guest sees them over 9P2000.L/TCP.
#
# One run: pvfsd serves a VM provisioned from a tiny template, diod serves a plain copy of the
# same tree on the same host filesystem, and ONE guest (Debian's kernel under QEMU TCG, user
# networking) mounts both with the same options
#     trans=tcp,version=9p2000.L,msize=MSIZE[,OPTS]      (cache=none unless OPTS says otherwise)
# and runs every row against both, interleaved (diod then pvfsd, the order rotating by
# repetition), so that load from other work on the machine falls on both alike. Times are taken
# in the guest (bench/9p-guest-bench.c: clock_gettime) and read back from its serial console.
#
# Rows: create N small files (open O_CREAT|O_EXCL, write 64 bytes, close), stat them, readdir of
# that directory, readdir + lstat of every entry (ls -l), unlink them; sequential write of MIB MiB
# (dd bs=1M conv=fsync) and reading it back (dd bs=1M, guest caches dropped first).
# The table gives medians over the repetitions, in seconds; ratio = pvfsd/diod (below 1: pvfsd faster).
#
# usage: bench/9p-vs-diod.sh [--files N] [--mib N] [--reps N] [--msize N] [--opts O] [--rows a,b]
#                            [--baseline PVFSD] [--timeout S] [--log FILE]
#   --files N   small files per metadata row (default 1000: TCG and user networking are slow)
#   --mib N     size of the data rows in MiB (default 32)
#   --reps N    repetitions (default 5)
#   --msize N   9P msize asked by the guest (default 65536: diod's largest, so both servers run
#               with the same one; the table's header shows what each mount got)
#   --opts O    extra mount options for both mounts, e.g. cache=loose
#   --rows L    subset of create,stat,readdir,lsl,unlink,write,read
#   --baseline PVFSD  also measure this other pvfsd binary (e.g. a build of an earlier commit),
#               as a third mount "pvfsd-before" in the same run, on a store of its own
#   --log FILE  keep the guest's serial log there
# Environment: PVFSD / PVFS_VM_BIN / PVFS_TEMPLATE_BIN (default: .build/release, built if missing),
# the knobs of scripts/lib/guest.sh (PVFS_GUEST_KEEP=1 keeps the work dir, PVFS_GUEST_VERBOSE=1).
# Needs root, qemu-system-x86, linux-image-amd64, busybox-static, diod, a C compiler, python3.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/lib/guest.sh"

FILES=1000 MIB=32 REPS=5 MSIZE=65536 OPTS="" ROWS="create,stat,readdir,lsl,unlink,write,read" TIMEOUT="" KEEPLOG="" BASELINE=""
while [ $# -gt 0 ]; do
    case $1 in
    --files) FILES=$2; shift 2 ;;
    --mib) MIB=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --msize) MSIZE=$2; shift 2 ;;
    --opts) OPTS=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --log) KEEPLOG=$2; shift 2 ;;
    --baseline) BASELINE=$(readlink -f "$2"); shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1" ;;
    esac
done
[ "$(id -u)" = 0 ] || gdie "needs root"
command -v diod >/dev/null || [ -x /usr/sbin/diod ] || gdie "diod missing (apt-get install diod)"
command -v python3 >/dev/null || gdie "python3 missing"
# Generous bound: TCG plus user networking manage roughly 4 MB/s and a few hundred requests/s.
TIMEOUT=${TIMEOUT:-$((600 + REPS * (FILES / 4 + MIB * 3)))}

release_binaries

guest_setup
W=$GUEST_WORK

# The guest's benchmark program: static, cached by content.
GB=$(static_program "$REPO/bench/9p-guest-bench.c" 9p-guest-bench -O2 -Wall)
KERNEL=$(guest_kernel)
KVER=$(guest_kver "$KERNEL")
guest_initramfs_new
guest_initramfs_busybox
# shellcheck disable=SC2086
guest_initramfs_modules "$KVER" $GUEST_MODS_VIRTIO_NET $GUEST_MODS_9P_TCP
guest_initramfs_file "$REPO/bench/9p-vs-diod-guest.sh" /init 0755
guest_initramfs_file "$GB" /bin/9p-guest-bench 0755
INITRD=$(guest_initramfs_pack pvfs-bench9p)

# The same tiny tree for both: a template for pvfsd, a plain copy for diod.
"$REPO/scripts/lib/make-tiny-tree.sh" "$W/tree"
cp -a "$W/tree" "$W/diod-root"
chmod 755 "$W/diod-root"
STORE=$W/store
export PVFS_STORE=$STORE
"$PVFS_TEMPLATE_BIN" create tiny --from "$W/tree" -q >/dev/null
"$PVFS_VM_BIN" provision --template tiny -q bench >/dev/null
"$PVFS_VM_BIN" bind bench --listener bench -q >/dev/null
if [ -n "$BASELINE" ]; then
    [ -x "$BASELINE" ] || gdie "no baseline binary $BASELINE"
    PVFS_STORE=$W/store-before "$PVFS_TEMPLATE_BIN" create tiny --from "$W/tree" -q >/dev/null
    PVFS_STORE=$W/store-before "$PVFS_VM_BIN" provision --template tiny -q bench >/dev/null
    PVFS_STORE=$W/store-before "$PVFS_VM_BIN" bind bench --listener bench -q >/dev/null
fi

PORT_DIOD=$(guest_free_port)
server_start diod "$PORT_DIOD" "$W/diod-root" "" "$W/diod.log"
DIOD_PID=$SERVER_PID
PORT_PVFSD=$(guest_free_port)
while [ "$PORT_PVFSD" = "$PORT_DIOD" ]; do PORT_PVFSD=$(guest_free_port); done
guest_spawn "$W/pvfsd.log" "$PVFSD" --store "$STORE" --listen "bench=tcp:127.0.0.1:$PORT_PVFSD" --log-level warning
PVFSD_PID=$GUEST_LAST_PID
guest_wait_port "$PORT_PVFSD" "$PVFSD_PID" || { cat "$W/pvfsd.log" >&2; gdie "pvfsd did not listen"; }
SERVERS=diod,pvfsd PORTS=$PORT_DIOD,$PORT_PVFSD ANAMES=$W/diod-root,bench PIDS="$DIOD_PID $PVFSD_PID"
if [ -n "$BASELINE" ]; then
    PORT_BEFORE=$(guest_free_port)
    while [ "$PORT_BEFORE" = "$PORT_DIOD" ] || [ "$PORT_BEFORE" = "$PORT_PVFSD" ]; do PORT_BEFORE=$(guest_free_port); done
    guest_spawn "$W/pvfsd-before.log" "$BASELINE" --store "$W/store-before" --listen "bench=tcp:127.0.0.1:$PORT_BEFORE" --log-level warning
    BEFORE_PID=$GUEST_LAST_PID
    guest_wait_port "$PORT_BEFORE" "$BEFORE_PID" || { cat "$W/pvfsd-before.log" >&2; gdie "the baseline pvfsd did not listen"; }
    SERVERS+=,pvfsd-before PORTS+=,$PORT_BEFORE ANAMES+=,bench PIDS+=" $BEFORE_PID"
fi

APPEND="$GUEST_BASE_APPEND bench.servers=$SERVERS bench.ports=$PORTS bench.anames=$ANAMES"
APPEND+=" bench.msize=$MSIZE bench.files=$FILES bench.mib=$MIB bench.reps=$REPS bench.rows=$ROWS"
[ -n "$OPTS" ] && APPEND+=" bench.opts=$OPTS"
LOG=$W/serial.log
glog "guest: $FILES files, $MIB MiB, $REPS repetitions, msize=$MSIZE${OPTS:+,$OPTS}; diod pid $DIOD_PID port $PORT_DIOD, pvfsd pid $PVFSD_PID port $PORT_PVFSD"
QRC=0
guest_boot_qemu "$KERNEL" "$INITRD" "$APPEND" "$LOG" "$TIMEOUT" || QRC=$?
[ -n "$KEEPLOG" ] && cp "$LOG" "$KEEPLOG"

# CPU time each server used over the whole run (user+system, seconds) and its peak RSS.
USAGE=""
set -- $PIDS
for name in ${SERVERS//,/ }; do
    USAGE+="$name $(awk '{ printf "%.2f", ($14 + $15) / '"$(getconf CLK_TCK)"' }' "/proc/$1/stat")s $(awk '/VmHWM/ { print $2 }' "/proc/$1/status") KiB; "
    shift
done

RC=0
tr -d '\r' <"$LOG" | grep -a 'BENCH-ERROR' >&2 && RC=1
tr -d '\r' <"$LOG" | grep -aq 'BENCH-DONE' || { glog "guest did not finish; last lines:"; tr -d '\r' <"$LOG" | tail -30 >&2; RC=1; }
MS_DIOD=$(tr -d '\r' <"$LOG" | grep -aoE 'BENCH-INFO mounted diod: .*' | grep -oE 'msize=[0-9]+' || true)
MS_PVFSD=$(tr -d '\r' <"$LOG" | grep -aoE 'BENCH-INFO mounted pvfsd: .*' | grep -oE 'msize=[0-9]+' || true)
[ "$MS_DIOD" = "$MS_PVFSD" ] || glog "warning: the mounts got different sizes: diod $MS_DIOD, pvfsd $MS_PVFSD"
echo
echo "9P2000.L over TCP (QEMU user networking), mounted with diod $MS_DIOD, pvfsd $MS_PVFSD${OPTS:+,$OPTS}; $FILES files, $MIB MiB; medians of $REPS, seconds"
tr -d '\r' <"$LOG" | grep -aoE 'BENCH-ROW .*' | python3 -c '
import sys, statistics
rows, order = {}, []
for line in sys.stdin:
    f = line.split()
    if len(f) != 6: continue
    _, row, server, rep, t0, t1 = f
    if row not in rows: rows[row] = {}; order.append(row)
    rows[row].setdefault(server, []).append(float(t1) - float(t0))
before = any("pvfsd-before" in r for r in rows.values())
head = "%-10s | %8s | %8s | %17s" % ("row", "diod", "pvfsd", "ratio(pvfsd/diod)")
if before: head += " | %12s | %10s" % ("pvfsd-before", "ratio(b/d)")
print(head + " | n")
print("-" * (len(head) + 4))
for row in order:
    d, p = rows[row].get("diod", []), rows[row].get("pvfsd", [])
    if not d or not p: continue
    md, mp = statistics.median(d), statistics.median(p)
    line = f"{row:<10} | {md:8.3f} | {mp:8.3f} | {mp / md:17.2f}"
    if before:
        b = rows[row].get("pvfsd-before", [])
        line += f" | {statistics.median(b):12.3f} | {statistics.median(b) / md:10.2f}" if b else " | " + " " * 12 + " | " + " " * 10
    print(line + f" | {min(len(d), len(p))}")
'
echo "server CPU over the run (user+sys) and peak RSS: $USAGE"
[ "$QRC" = 0 ] || RC=1
exit "$RC"
