#!/usr/bin/env bash
# pvfs's FUSE view against fuse-overlayfs and kernel overlayfs over the same lower tree and the
# same upper filesystem, plus the cost of provisioning a root (pvfs VM vs ostree checkout vs cp -a).
#
#   bench/fuse-vs-overlay.sh [--runs N] [--lower DIR] [--work DIR]
#
# Needs root, /dev/fuse, fuse-overlayfs, ostree, python3, and release builds of pvfs-vm and
# pvfs-devtool (built here when missing). Every row runs on a fresh upper layer (a fresh VM for
# pvfs) with caches dropped before it; each run prints its table, the last table holds medians.
# Rows: seconds, smaller is better; the ratio columns are pvfs / other (below 1: pvfs faster).
set -euo pipefail

RUNS=3
LOWER=/srv/pvfs-cache/minbase
WORK=/var/tmp/pvfs-bench
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --lower) LOWER=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        *) echo "usage: $0 [--runs N] [--lower DIR] [--work DIR]" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "bench: needs root" >&2; exit 1; }
[ -d "$LOWER" ] || { echo "bench: no lower tree at $LOWER" >&2; exit 1; }
for tool in fuse-overlayfs ostree python3; do
    command -v "$tool" > /dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=$REPO/.build/release
if [ ! -x "$BIN/pvfs-vm" ] || [ ! -x "$BIN/pvfs-devtool" ]; then
    (cd "$REPO" && swift build -c release --product pvfs-vm && swift build -c release --product pvfs-devtool)
fi

STORE=$WORK/store
mkdir -p "$WORK"
MOUNTS=()
cleanup() {
    for m in "${MOUNTS[@]:-}"; do
        [ -n "$m" ] && mountpoint -q "$m" && umount "$m" 2>/dev/null || true
    done
}
trap cleanup EXIT

drop_caches() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
}

now() { date +%s.%N; }

# Runs "$@" and prints its wall time in seconds.
timed() {
    local t0 t1
    t0=$(now)
    "$@" > /dev/null
    t1=$(now)
    python3 -c "print(f'{$t1 - $t0:.4f}')"
}

walk() { find "$1" -xdev -printf '%i %n %s %m %T@\n'; }
read_all() { find "$1" -xdev -type f -print0 | xargs -0 -r cat > /dev/null; }
create_unlink() {
    python3 - "$1" <<'EOF'
import os, sys
d = os.path.join(sys.argv[1], "bench-small")
os.mkdir(d)
payload = b"x" * 100
for i in range(5000):
    fd = os.open(f"{d}/f{i}", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, payload)
    os.close(fd)
for i in range(5000):
    os.unlink(f"{d}/f{i}")
os.rmdir(d)
EOF
}
seq_write() { dd if=/dev/zero of="$1/bench-big" bs=1M count=512 conv=fsync status=none; }
seq_read() { dd if="$1/bench-big" of=/dev/null bs=1M status=none; }

# One-time preparation: the pvfs template, and an ostree repository holding the same tree.
if [ ! -f "$STORE/.bench-template" ]; then
    rm -rf "$STORE"
    if [ -x "$BIN/pvfs-template" ] && "$BIN/pvfs-template" create --help > /dev/null 2>&1; then
        "$BIN/pvfs-template" create --store "$STORE" minbase --from "$LOWER"
    else
        "$BIN/pvfs-devtool" template --store "$STORE" --name minbase "$LOWER"
    fi
    touch "$STORE/.bench-template"
fi
if [ ! -f "$WORK/ostree-repo/.bench-committed" ]; then
    rm -rf "$WORK/ostree-repo"
    ostree init --repo="$WORK/ostree-repo" --mode=bare > /dev/null
    # ostree holds no device nodes, fifos or sockets (a booted system gets /dev from devtmpfs):
    # commit a copy without them.
    rm -rf "$WORK/ostree-src"
    cp -a "$LOWER" "$WORK/ostree-src"
    find "$WORK/ostree-src" -xdev \( -type c -o -type b -o -type p -o -type s \) -delete
    ostree commit --repo="$WORK/ostree-repo" --branch=minbase --tree=dir="$WORK/ostree-src" --no-xattrs > /dev/null
    rm -rf "$WORK/ostree-src"
    touch "$WORK/ostree-repo/.bench-committed"
fi

ROWS=(walk read create_unlink seq_write seq_read)
declare -A RESULTS   # key: row/system/run

measure_system() {  # system mountpoint run
    local system=$1 mnt=$2 run=$3
    drop_caches; RESULTS[walk/$system/$run]=$(timed walk "$mnt")
    drop_caches; RESULTS[read/$system/$run]=$(timed read_all "$mnt")
    drop_caches; RESULTS[create_unlink/$system/$run]=$(timed create_unlink "$mnt")
    drop_caches; RESULTS[seq_write/$system/$run]=$(timed seq_write "$mnt")
    drop_caches; RESULTS[seq_read/$system/$run]=$(timed seq_read "$mnt")
}

print_table() {  # title, then "row pvfs fuse-overlayfs kernel-overlay" lines on stdin
    python3 -c '
import sys
title = sys.argv[1]
print()
print(title)
print("%-16s%10s%10s%11s%11s%11s" % ("row", "pvfs", "fuse-ovl", "kernel-ovl", "pvfs/fuse", "pvfs/kern"))
for line in sys.stdin:
    name, *values = line.split()
    v = [float(x) for x in values]
    print("%-16s%10.3f%10.3f%11.3f%11.2f%11.2f" % (name, v[0], v[1], v[2], v[0] / v[1], v[0] / v[2]))
' "$1"
}

for run in $(seq 1 "$RUNS"); do
    # Provisioning a root: a pvfs VM, an ostree hardlink checkout, a full copy.
    vm="bench-$run-$$"
    RESULTS[provision/pvfs/$run]=$("$BIN/pvfs-devtool" provision --store "$STORE" --template minbase --name "$vm")
    rm -rf "$WORK/checkout" "$WORK/copy"
    drop_caches; RESULTS[provision/fuse/$run]=$(timed ostree checkout --repo="$WORK/ostree-repo" minbase "$WORK/checkout")
    drop_caches; RESULTS[provision/kern/$run]=$(timed cp -a "$LOWER" "$WORK/copy")
    rm -rf "$WORK/checkout" "$WORK/copy"

    # pvfs (release build)
    mkdir -p "$WORK/pvfs-mnt"
    "$BIN/pvfs-vm" mount --store "$STORE" "$vm" "$WORK/pvfs-mnt"
    MOUNTS+=("$WORK/pvfs-mnt")
    measure_system pvfs "$WORK/pvfs-mnt" "$run"
    "$BIN/pvfs-vm" umount --store "$STORE" "$WORK/pvfs-mnt"
    "$BIN/pvfs-devtool" remove --store "$STORE" --name "$vm"

    # fuse-overlayfs
    rm -rf "$WORK/fo-upper" "$WORK/fo-work"
    mkdir -p "$WORK/fo-upper" "$WORK/fo-work" "$WORK/fo-mnt"
    fuse-overlayfs -o "lowerdir=$LOWER,upperdir=$WORK/fo-upper,workdir=$WORK/fo-work" "$WORK/fo-mnt"
    MOUNTS+=("$WORK/fo-mnt")
    measure_system fuse "$WORK/fo-mnt" "$run"
    umount "$WORK/fo-mnt"

    # kernel overlayfs
    rm -rf "$WORK/ko-upper" "$WORK/ko-work"
    mkdir -p "$WORK/ko-upper" "$WORK/ko-work" "$WORK/ko-mnt"
    mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$WORK/ko-upper,workdir=$WORK/ko-work" "$WORK/ko-mnt"
    MOUNTS+=("$WORK/ko-mnt")
    measure_system kern "$WORK/ko-mnt" "$run"
    umount "$WORK/ko-mnt"

    {
        for row in "${ROWS[@]}"; do
            echo "$row ${RESULTS[$row/pvfs/$run]} ${RESULTS[$row/fuse/$run]} ${RESULTS[$row/kern/$run]}"
        done
    } | print_table "run $run of $RUNS (seconds)"
    echo "provision: pvfs VM ${RESULTS[provision/pvfs/$run]} s, ostree checkout ${RESULTS[provision/fuse/$run]} s, cp -a ${RESULTS[provision/kern/$run]} s"
done

median() { python3 -c 'import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
{
    for row in "${ROWS[@]}"; do
        line="$row"
        for system in pvfs fuse kern; do
            values=()
            for run in $(seq 1 "$RUNS"); do values+=("${RESULTS[$row/$system/$run]}"); done
            line="$line $(median "${values[@]}")"
        done
        echo "$line"
    done
} | print_table "medians of $RUNS runs (seconds)"
values=(); for run in $(seq 1 "$RUNS"); do values+=("${RESULTS[provision/pvfs/$run]}"); done; p=$(median "${values[@]}")
values=(); for run in $(seq 1 "$RUNS"); do values+=("${RESULTS[provision/fuse/$run]}"); done; o=$(median "${values[@]}")
values=(); for run in $(seq 1 "$RUNS"); do values+=("${RESULTS[provision/kern/$run]}"); done; c=$(median "${values[@]}")
echo "provision medians: pvfs VM $p s, ostree checkout $o s, cp -a $c s"
