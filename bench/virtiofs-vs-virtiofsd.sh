#!/bin/bash
# bench/virtiofs-vs-virtiofsd.sh: pvfsd over virtio-fs against virtiofsd, and pvfsd's 9P over TCP,
# as one Linux guest sees them.
#
# One run, three servers of the same tree, ONE guest (Debian's kernel under QEMU TCG, guest memory
# a memfd with share=on, as vhost-user-fs requires) that mounts all three:
#   virtiofsd   Debian 12's C virtiofsd (/usr/lib/qemu/virtiofsd, QEMU 7.2; its version is printed)
#               serving a plain copy of the tree, -o cache=auto -o xattr (1 s name/attribute
#               timeouts, like pvfsd's default), on a vhost-user-fs device of its own
#   pvfsd-vfs   pvfsd serving a VM provisioned from a template of the tree, over virtio-fs on the
#               VM's vhost-user binding (pvfs-vm bind VM --vhost-user PATH; QEMU's options from
#               pvfs-vm qemu-args --transport virtiofs)
#   pvfsd-9p    another pvfsd (a store of its own, so that each daemon's CPU and memory are its
#               own) serving a VM of the same template over 9P2000.L/TCP (QEMU user networking),
#               trans=tcp,version=9p2000.L,msize=MSIZE, cache=none
# Every row runs against all three, interleaved, the order rotating between repetitions, so that
# load from other work on the machine falls on all alike (the guest side is bench/9p-vs-diod-guest.sh
# and bench/9p-guest-bench.c, shared with bench/9p-vs-diod.sh). Times are taken in the guest.
#
# Rows: create N small files (open O_CREAT|O_EXCL, write 64 bytes, close), stat them, readdir of
# that directory, readdir + lstat of every entry (ls -l), unlink them; sequential write of MIB MiB
# (dd bs=1M conv=fsync) and reading it back (dd bs=1M, guest caches dropped first); tar: busybox
# tar extracting an archive of --tar-from (default /usr/include/linux) held in guest memory.
# The table gives medians over the repetitions, in seconds, and ratio = server/virtiofsd (below 1:
# faster than virtiofsd).
#
# Memory: every 0.5 s the script samples each server's resident memory without the mapped guest
# RAM (RssAnon + RssFile of /proc/PID/status; the guest's memfd counts as RssShmem), summed over
# the server's processes (virtiofsd runs a sandboxed child), before the guest connects and while it
# runs. virtiofsd runs one process per guest, so all of it is per-guest cost; for pvfsd the
# per-guest cost is the growth over its idle daemon.
#
# usage: bench/virtiofs-vs-virtiofsd.sh [--files N] [--mib N] [--reps N] [--msize N] [--rows a,b]
#                                       [--tar-from DIR] [--timeout S] [--log FILE] [--json]
#   --files N      small files per metadata row (default 1000)
#   --mib N        size of the data rows in MiB (default 32)
#   --reps N       repetitions (default 5)
#   --msize N      9P msize asked by the guest for pvfsd-9p (default 1048576, as large as the
#                  virtio-fs requests of 256 pages)
#   --rows L       subset of create,stat,readdir,lsl,unlink,write,read,tar, in that order (stat,
#                  readdir, lsl need create; create and unlink go together, so do write and read)
#   --tar-from D   the tree archived for the tar row (default /usr/include/linux)
#   --timeout S    bound on the guest run
#   --log FILE     keep the guest's serial log there
#   --json         print the results as one JSON object instead of the table
# Environment: PVFSD / PVFS_VM_BIN / PVFS_TEMPLATE_BIN (default: .build/release, built if missing),
# VIRTIOFSD (default /usr/lib/qemu/virtiofsd), the knobs of scripts/lib/guest.sh (PVFS_GUEST_MEM,
# PVFS_GUEST_KEEP=1 keeps the work dir, PVFS_GUEST_VERBOSE=1).
# Needs root, qemu-system-x86 (with virtiofsd), linux-image-amd64, busybox-static, a C compiler
# with static glibc, python3.
# Exit status: 0 every row measured on every server, 1 a row failed or the guest did not finish,
# 2 setup error.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/lib/guest.sh"

FILES=1000 MIB=32 REPS=5 MSIZE=1048576 ROWS="create,stat,readdir,lsl,unlink,write,read,tar"
TAR_FROM=/usr/include/linux TIMEOUT="" KEEPLOG="" JSON=0
while [ $# -gt 0 ]; do
    case $1 in
    --files) FILES=$2; shift 2 ;;
    --mib) MIB=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --msize) MSIZE=$2; shift 2 ;;
    --rows) ROWS=$2; shift 2 ;;
    --tar-from) TAR_FROM=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --log) KEEPLOG=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1 (see --help)" ;;
    esac
done
for n in "$FILES" "$MIB" "$REPS" "$MSIZE"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || gdie "--files, --mib, --reps and --msize take positive integers, not '$n'"
done
for r in ${ROWS//,/ }; do
    case $r in create | stat | readdir | lsl | unlink | write | read | tar) ;; *) gdie "unknown row $r" ;; esac
done
# The rows work on what the ones before left: the small files live from create to unlink, the
# big file from write to read.
has_row() { [[ ,$ROWS, == *,$1,* ]]; }
for r in stat readdir lsl unlink; do
    if has_row "$r" && ! has_row create; then gdie "row $r needs row create"; fi
done
if has_row create && ! has_row unlink; then gdie "row create needs row unlink (each repetition starts afresh)"; fi
if has_row read && ! has_row write; then gdie "row read needs row write"; fi
if has_row write && ! has_row read; then gdie "row write needs row read (it removes the file)"; fi
[ "$(id -u)" = 0 ] || gdie "needs root"
VIRTIOFSD=${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
[ -x "$VIRTIOFSD" ] || gdie "no $VIRTIOFSD (apt-get install qemu-system-common)"
command -v python3 >/dev/null || gdie "python3 missing"
[ -d "$TAR_FROM" ] || gdie "--tar-from $TAR_FROM is not a directory"
VIRTIOFSD_VERSION=$("$VIRTIOFSD" --version 2>&1 | head -1)
# Generous bound: 9P over user networking manages a few hundred requests/s under TCG.
TIMEOUT=${TIMEOUT:-$((600 + REPS * (FILES / 2 + MIB * 4 + 120)))}

release_binaries

guest_setup
W=$GUEST_WORK

# The guest's benchmark program: static, cached by content.
GB=$(static_program "$REPO/bench/9p-guest-bench.c" 9p-guest-bench -O2 -Wall)
# The tar row's archive, in guest memory (the initramfs), so that only the extraction is measured.
tar -C "$(dirname "$(readlink -f "$TAR_FROM")")" -cf "$W/tree.tar" "$(basename "$(readlink -f "$TAR_FROM")")"
TAR_ENTRIES=$(tar -tf "$W/tree.tar" | wc -l)
TAR_KIB=$(du -k "$W/tree.tar" | cut -f1)

KERNEL=$(guest_kernel)
KVER=$(guest_kver "$KERNEL")
guest_initramfs_new
guest_initramfs_busybox
# shellcheck disable=SC2086
guest_initramfs_modules "$KVER" $GUEST_MODS_VIRTIO_NET $GUEST_MODS_9P_TCP $GUEST_MODS_VIRTIOFS
guest_initramfs_file "$REPO/bench/9p-vs-diod-guest.sh" /init 0755
guest_initramfs_file "$GB" /bin/9p-guest-bench 0755
guest_initramfs_dir /bench
guest_initramfs_file "$W/tree.tar" /bench/tree.tar 0644
INITRD=$(guest_initramfs_pack pvfs-bench-virtiofs none)

# The same tiny tree for all three: a plain copy for virtiofsd, a template in each pvfsd's store.
"$REPO/scripts/lib/make-tiny-tree.sh" "$W/tree"
cp -a "$W/tree" "$W/virtiofsd-root"
chmod 755 "$W/virtiofsd-root"
for s in vfs 9p; do
    PVFS_STORE=$W/store-$s "$PVFS_TEMPLATE_BIN" create tiny --from "$W/tree" -q >/dev/null
    PVFS_STORE=$W/store-$s "$PVFS_VM_BIN" provision --template tiny -q bench >/dev/null
done
PVFSD_SOCKET=$W/pvfsd.vhost
PVFS_STORE=$W/store-vfs "$PVFS_VM_BIN" bind bench --vhost-user "$PVFSD_SOCKET" -q >/dev/null
PVFS_STORE=$W/store-9p "$PVFS_VM_BIN" bind bench --listener bench -q >/dev/null

# wait_socket PATH PID NAME LOG: until PATH is a socket, or the process is gone.
wait_socket() {
    for _ in $(seq 1 150); do
        [ -S "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    cat "$4" >&2 2>/dev/null || true
    gdie "$3 did not create $1"
}

VIRTIOFSD_SOCKET=$W/virtiofsd.sock
VIRTIOFSD_ARGS=(--socket-path="$VIRTIOFSD_SOCKET" -o source="$W/virtiofsd-root" -o cache=auto -o xattr)
glog "virtiofsd: $VIRTIOFSD_VERSION: ${VIRTIOFSD_ARGS[*]}"
guest_spawn "$W/virtiofsd.log" "$VIRTIOFSD" "${VIRTIOFSD_ARGS[@]}"
VIRTIOFSD_PID=$GUEST_LAST_PID
wait_socket "$VIRTIOFSD_SOCKET" "$VIRTIOFSD_PID" virtiofsd "$W/virtiofsd.log"

guest_spawn "$W/pvfsd-vfs.log" "$PVFSD" --store "$W/store-vfs" --log-level warning
PVFSD_VFS_PID=$GUEST_LAST_PID
wait_socket "$PVFSD_SOCKET" "$PVFSD_VFS_PID" pvfsd "$W/pvfsd-vfs.log"

PORT_9P=$(guest_free_port)
guest_spawn "$W/pvfsd-9p.log" "$PVFSD" --store "$W/store-9p" --listen "bench=tcp:127.0.0.1:$PORT_9P" --log-level warning
PVFSD_9P_PID=$GUEST_LAST_PID
guest_wait_port "$PORT_9P" "$PVFSD_9P_PID" || { cat "$W/pvfsd-9p.log" >&2; gdie "pvfsd did not listen on $PORT_9P"; }

# QEMU's options for pvfsd's device (and the guest's one memory backend, share=on) from pvfs-vm;
# virtiofsd's device on the same memory.
mapfile -t QEMU_FS_ARGS < <(PVFS_STORE=$W/store-vfs "$PVFS_VM_BIN" qemu-args bench --transport virtiofs \
    --memory "${GUEST_MEM}M" --tag pvfsd --json |
    python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)["arguments"]))')
[ "${#QEMU_FS_ARGS[@]}" -gt 0 ] || gdie "pvfs-vm qemu-args printed no options"
QEMU_FS_ARGS+=(-chardev "socket,id=virtiofsd,path=$VIRTIOFSD_SOCKET" -device vhost-user-fs-pci,chardev=virtiofsd,tag=virtiofsd)

# Sampler: "NAME PHASE KIB CPU PROCS" lines: RssAnon + RssFile (KiB) and user+system CPU seconds,
# summed over the process and its descendants, and how many processes that is. PHASE idle: before
# QEMU starts; run: while it runs. (virtiofsd exits when its guest goes, hence sampling.)
tree_pids() {
    local p=$1 c
    echo "$p"
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree_pids "$c"; done
}
HZ=$(getconf CLK_TCK)
usage_of() {
    local kib=0 cpu=0 procs=0 p v
    kill -0 "$1" 2>/dev/null || return 0
    for p in $(tree_pids "$1"); do
        v=$(awk '/^RssAnon:|^RssFile:/ { s += $2 } END { print s + 0 }' "/proc/$p/status" 2>/dev/null) || continue
        kib=$((kib + v))
        cpu=$(awk -v t="$cpu" -v hz="$HZ" '{ printf "%.2f", t + ($14 + $15) / hz }' "/proc/$p/stat" 2>/dev/null) || continue
        procs=$((procs + 1))
    done
    echo "$kib $cpu $procs"
}
sample() {
    local u
    u=$(usage_of "$VIRTIOFSD_PID") && [ -n "$u" ] && echo "virtiofsd $1 $u"
    u=$(usage_of "$PVFSD_VFS_PID") && [ -n "$u" ] && echo "pvfsd-vfs $1 $u"
    u=$(usage_of "$PVFSD_9P_PID") && [ -n "$u" ] && echo "pvfsd-9p $1 $u"
    return 0
}
MEMLOG=$W/usage.log
sample idle >"$MEMLOG"
(while sleep 0.5; do sample run; done) >>"$MEMLOG" 2>/dev/null &
SAMPLER_PID=$!
GUEST_PIDS+=("$SAMPLER_PID")

GUEST_NET_ARGS=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=)
APPEND="$GUEST_BASE_APPEND no_timer_check bench.servers=virtiofsd,pvfsd-vfs,pvfsd-9p bench.kinds=virtiofs,virtiofs,9p"
APPEND+=" bench.ports=0,0,$PORT_9P bench.anames=virtiofsd,pvfsd,bench"
APPEND+=" bench.msize=$MSIZE bench.files=$FILES bench.mib=$MIB bench.reps=$REPS bench.rows=$ROWS"
LOG=$W/serial.log
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
glog "guest: $FILES files, $MIB MiB, tar of $TAR_FROM ($TAR_ENTRIES entries, $TAR_KIB KiB), $REPS repetitions; load $LOAD_BEFORE"
QRC=0
guest_boot_qemu "$KERNEL" "$INITRD" "$APPEND" "$LOG" "$TIMEOUT" "${QEMU_FS_ARGS[@]}" || QRC=$?
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
kill "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
[ -n "$KEEPLOG" ] && cp "$LOG" "$KEEPLOG"

sample run >>"$MEMLOG" # the daemons that still run: their CPU time to the end

RC=0
tr -d '\r' <"$LOG" | grep -a 'BENCH-ERROR' >&2 && RC=1
tr -d '\r' <"$LOG" | grep -aq 'BENCH-DONE' || { glog "guest did not finish; last lines:"; tr -d '\r' <"$LOG" | tail -30 >&2; RC=1; }
MS_9P=$(tr -d '\r' <"$LOG" | grep -aoE 'BENCH-INFO mounted pvfsd-9p: .*' | grep -oE 'msize=[0-9]+' || true)
[ "$QRC" = 0 ] || RC=1

tr -d '\r' <"$LOG" | grep -aoE 'BENCH-ROW .*' >"$W/rows.txt" || true
JSON=$JSON FILES=$FILES MIB=$MIB REPS=$REPS ROWSFILE=$W/rows.txt MEMLOG=$MEMLOG \
    TAR="$TAR_FROM ($TAR_ENTRIES entries, $TAR_KIB KiB)" VERSION="$VIRTIOFSD_VERSION" MS_9P="$MS_9P" \
    LOAD="before $LOAD_BEFORE, after $LOAD_AFTER" python3 - <<'EOF'
import json, os, statistics, sys
env = os.environ
servers = ["virtiofsd", "pvfsd-vfs", "pvfsd-9p"]
rows, order = {}, []
for line in open(env["ROWSFILE"]):
    f = line.split()
    if len(f) != 6: continue
    _, row, server, rep, t0, t1 = f
    if row not in rows: rows[row] = {}; order.append(row)
    rows[row].setdefault(server, []).append(float(t1) - float(t0))
# Peaks: memory before the guest and while it ran, CPU seconds at the end, most processes.
mem = {s: {"idle": 0, "run": 0} for s in servers}
cpu = {s: 0.0 for s in servers}
procs = {s: 0 for s in servers}
for line in open(env["MEMLOG"]):
    f = line.split()
    if len(f) == 5 and f[0] in mem and f[1] in mem[f[0]]:
        mem[f[0]][f[1]] = max(mem[f[0]][f[1]], int(f[2]))
        cpu[f[0]] = max(cpu[f[0]], float(f[3]))
        procs[f[0]] = max(procs[f[0]], int(f[4]))
if env["JSON"] == "1":
    print(json.dumps({
        "virtiofsd": env["VERSION"], "files": int(env["FILES"]), "mib": int(env["MIB"]),
        "repetitions": int(env["REPS"]), "tar": env["TAR"], "load": env["LOAD"],
        "cpu_seconds": cpu, "processes": procs,
        "rows": {r: {s: {"median": statistics.median(v), "n": len(v)} for s, v in rows[r].items()} for r in order},
        "memory_kib": mem,
    }, indent=1))
    sys.exit(0)
print()
print("%s (-o cache=auto -o xattr) and pvfsd over virtio-fs; pvfsd over 9P2000.L/TCP %s, cache=none"
      % (env["VERSION"], env["MS_9P"]))
print("%s files, %s MiB, tar of %s; medians of %s, seconds; ratio = server/virtiofsd"
      % (env["FILES"], env["MIB"], env["TAR"], env["REPS"]))
print("load average (1/5/15 min): " + env["LOAD"])
head = "%-8s | %9s | %9s | %6s | %9s | %6s | %s" % ("row", "virtiofsd", "pvfsd-vfs", "ratio", "pvfsd-9p", "ratio", "n")
print(head)
print("-" * len(head))
for row in order:
    m = {s: statistics.median(v) for s, v in rows[row].items()}
    base = m.get("virtiofsd")
    cell = lambda s: ("%9.3f" % m[s]) if s in m else "%9s" % "-"
    ratio = lambda s: ("%6.2f" % (m[s] / base)) if s in m and base else "%6s" % "-"
    n = min(len(v) for v in rows[row].values())
    print("%-8s | %s | %s | %s | %s | %s | %d" % (row, cell("virtiofsd"), cell("pvfsd-vfs"), ratio("pvfsd-vfs"),
                                                cell("pvfsd-9p"), ratio("pvfsd-9p"), n))
print("server CPU over the run (user+sys, s): " + ", ".join("%s %.2f" % (s, cpu[s]) for s in servers))
print("resident memory without the guest's RAM (RssAnon+RssFile, KiB): idle before the guest / peak while serving")
for s in servers:
    print("  %-9s %8d / %8d   growth %8d" % (s, mem[s]["idle"], mem[s]["run"], mem[s]["run"] - mem[s]["idle"]))
print("  per guest: virtiofsd all of it, %d KiB (%d processes); pvfsd over virtio-fs its growth, %d KiB"
      % (mem["virtiofsd"]["run"], procs["virtiofsd"], mem["pvfsd-vfs"]["run"] - mem["pvfsd-vfs"]["idle"]))
EOF
exit "$RC"
