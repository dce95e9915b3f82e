#!/bin/bash
# bench/xen-9p.sh: the same guest workload in a Xen PV domU over Xen PV 9pfs rings, served by
# pvfsd and by QEMU's Xen 9pfs backend (xen-qemu-system-i386 attached by hand, security_model=none,
# an ext2 image in dom0), side by side.
#
#   bench/xen-9p.sh [--files N] [--mib M] [--rounds R] [--pvfsd-prefix CMD] [--pvfsd-args ARGS] [--keep]
#
# Each backend gets one nested Xen 4.17 boot under QEMU TCG (Tests/guest/xen/run-xen-9pfs.sh
# --backend pvfsd, then --backend qemu-manual); the domU runs Tests/guest/bench-workload.sh:
# per round, create/stat/unlink N small files (4 KiB) and write (fsync) then read an M-MiB file
# sequentially. Rows: median seconds over the rounds; ratio = pvfs / qemu (below 1: pvfs faster).
# --pvfsd-prefix CMD runs pvfsd in dom0 under CMD, e.g. "taskset 1" (one vCPU); --pvfsd-args
# adds options, e.g. "--catalog-commit grouped".
# Absolute numbers are those of software emulation (every hypercall, grant map and event channel
# notification is emulated), so only the ratio means something.
# Needs root and the Xen 4.17 packages; builds pvfsd/pvfs-vm/pvfs-template (release, Swift runtime
# linked in) when missing or older than the sources (Tests/guest/xen/release-builds.sh).
set -uo pipefail
FILES=100 MIB=16 ROUNDS=3 KEEP=0 PREFIX="" PVFSD_ARGS=""
while [ $# -gt 0 ]; do
    case $1 in
    --files) FILES=$2; shift 2 ;;
    --mib) MIB=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --pvfsd-prefix) PREFIX=$2; shift 2 ;;
    --pvfsd-args) PVFSD_ARGS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
XEN_DIR=$ROOT/Tests/guest/xen
export PATH=/opt/swift/usr/bin:$PATH
say() { echo "xen-9p: $*" >&2; }
[ "$(id -u)" = 0 ] || { say "needs root"; exit 2; }
[ -e /boot/xen-4.17-amd64.gz ] || { say "no /boot/xen-4.17-amd64.gz"; exit 2; }

REL=$ROOT/.build/release
. "$XEN_DIR/release-builds.sh"
ensure_release_builds "$ROOT" || exit 2

WORK=$(mktemp -d /var/tmp/pvfs-xen-bench.XXXXXX)
if [ "$KEEP" = 1 ]; then say "work directory $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
STORE=$WORK/store
"$ROOT/scripts/lib/make-tiny-tree.sh" "$WORK/tiny" &&
    "$REL/pvfs-template" create tiny --from "$WORK/tiny" --store "$STORE" >/dev/null &&
    "$REL/pvfs-vm" provision --store "$STORE" --template tiny --no-hooks benchvm >/dev/null &&
    "$REL/pvfs-vm" bind --store "$STORE" benchvm --xen-name domU >/dev/null || { say "store setup failed"; exit 2; }

APPEND="pvfs.run=bench pvfs.bench=$FILES,$MIB,$ROUNDS"
declare -A WALL
for backend in pvfsd qemu; do
    args=(--domu-append "$APPEND" --log "$WORK/$backend.log" --timeout 1500)
    if [ $backend = pvfsd ]; then
        args+=(--backend pvfsd --store "$STORE" --vm benchvm --pvfsd "$REL/pvfsd" --pvfs-vm "$REL/pvfs-vm")
        [ -n "$PREFIX" ] && args+=(--env "PVFS_XEN_PVFSD_PREFIX=$PREFIX")
        [ -n "$PVFSD_ARGS" ] && args+=(--env "PVFS_XEN_PVFSD_ARGS=$PVFSD_ARGS")
    else
        args+=(--backend qemu-manual)
    fi
    say "running the workload against $backend"
    start=$(date +%s)
    "$XEN_DIR/run-xen-9pfs.sh" "${args[@]}" >"$WORK/$backend.out" 2>&1
    WALL[$backend]=$(($(date +%s) - start))
    good=$(tr -d '\r' <"$WORK/$backend.log" | grep -aoc 'PVFS-TEST bench-round-[0-9]* ok')
    say "$backend: $good of $ROUNDS rounds ok, ${WALL[$backend]}s wall"
    [ "$good" = "$ROUNDS" ] || { tail -30 "$WORK/$backend.out" >&2; say "$backend: the workload did not complete"; }
done

tr -d '\r' <"$WORK/pvfsd.log" | grep -ao 'PVFS-BENCH round=[0-9]* op=[a-z]* n=[0-9]* seconds=[0-9.]*' >"$WORK/pvfsd.rows"
tr -d '\r' <"$WORK/qemu.log" | grep -ao 'PVFS-BENCH round=[0-9]* op=[a-z]* n=[0-9]* seconds=[0-9.]*' >"$WORK/qemu.rows"
python3 - "$WORK/pvfsd.rows" "$WORK/qemu.rows" "$FILES" "$MIB" "$ROUNDS" <<'PY'
import sys, statistics
def load(path):
    rows = {}
    for line in open(path):
        f = dict(kv.split("=", 1) for kv in line.split()[1:])
        rows.setdefault(f["op"], []).append(float(f["seconds"]))
    return rows
p, q = load(sys.argv[1]), load(sys.argv[2])
files, mib, rounds = sys.argv[3], int(sys.argv[4]), sys.argv[5]
print(f"Xen PV 9pfs, domU workload, median of {rounds} rounds (seconds; ratio = pvfs/qemu, below 1: pvfs faster)")
print(f"{'operation':<26} {'pvfsd':>9} {'qemu':>9} {'ratio':>7}   {'pvfsd':>12} {'qemu':>12}")
labels = {"create": f"create {files} x 4 KiB", "stat": f"stat {files}", "unlink": f"unlink {files}",
          "write": f"write {mib} MiB (fsync)", "read": f"read {mib} MiB"}
for op in ["create", "stat", "unlink", "write", "read"]:
    if op not in p or op not in q:
        print(f"{labels[op]:<26} {'-':>9} {'-':>9}"); continue
    a, b = statistics.median(p[op]), statistics.median(q[op])
    ratio = f"{a / b:.2f}" if b > 0 else "-"
    if op in ("write", "read"):
        ra, rb = (f"{mib / a:.2f} MiB/s" if a else "-"), (f"{mib / b:.2f} MiB/s" if b else "-")
    else:
        n = int(files)
        ra, rb = (f"{n / a:.0f} ops/s" if a else "-"), (f"{n / b:.0f} ops/s" if b else "-")
    print(f"{labels[op]:<26} {a:>9.3f} {b:>9.3f} {ratio:>7}   {ra:>12} {rb:>12}")
PY
[ -n "$PREFIX" ] && echo "pvfsd ran under: $PREFIX"
[ -n "$PVFSD_ARGS" ] && echo "pvfsd options: $PVFSD_ARGS"
echo "wall: pvfsd run ${WALL[pvfsd]}s, qemu run ${WALL[qemu]}s (each includes booting nested Xen and dom0)"
