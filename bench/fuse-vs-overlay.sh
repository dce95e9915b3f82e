#!/usr/bin/env bash
# pvfs's FUSE view against fuse-overlayfs and kernel overlayfs over the same lower tree and the
# same upper filesystem, plus the cost of provisioning a root (pvfs VM vs ostree checkout vs cp -a).
#
#   bench/fuse-vs-overlay.sh [--runs N] [--lower DIR] [--work DIR] [--image FILE] [--image-size SIZE]
#                            [--no-image] [--rows "walk read create_unlink seq_write seq_read"]
#                            [--no-provision] [--bin DIR] [--baseline-bin DIR] [--fuse-server]
#
# Needs root, /dev/fuse, fuse-overlayfs, ostree, python3, mkfs.ext4, and release builds of
# pvfs-vm and pvfs-devtool (built here when missing). Every run uses fresh upper layers (a fresh
# VM for pvfs); caches are dropped before each row; each run prints its table, the last table
# holds medians. Rows: seconds, smaller is better; the ratio columns are pvfs / other (below 1:
# pvfs faster). --bin takes pvfs-vm and pvfs-devtool from DIR instead; --baseline-bin adds a
# column "pvfs-base" served by DIR/pvfs-vm (an earlier build) next to the others; --fuse-server
# adds a column "pvfs-srv" served by pvfs's own FUSE server over /dev/fuse (`pvfs-vm mount
# --engine fuse-server`, the server virtio-fs guests get) instead of libfuse.
#
# All three systems work on one freshly made ext4 (default options, with its journal) mounted
# from a loop image at WORK: the lower tree is copied there, and the pvfs store, the upper layers
# and the ostree repository live there too. A long-lived filesystem that has seen many mass
# deletes makes inode allocation slow (ext4 without a journal especially) and would charge that
# to whichever system runs on it; --no-image uses WORK as it is instead. The image is a sparse
# file (default: WORK.img, 8G), removed at the end.
set -euo pipefail

RUNS=3
LOWER=/srv/pvfs-cache/minbase
WORK=/var/tmp/pvfs-bench
IMAGE=
IMAGE_SIZE=8G
USE_IMAGE=1
ROWS=(walk read create_unlink seq_write seq_read)
PROVISION=1
BIN=
BASE_BIN=
FUSE_SERVER=
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --lower) LOWER=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --image) IMAGE=$2; shift 2 ;;
        --image-size) IMAGE_SIZE=$2; shift 2 ;;
        --no-image) USE_IMAGE=; shift ;;
        --rows) read -r -a ROWS <<< "$2"; shift 2 ;;
        --no-provision) PROVISION=; shift ;;
        --bin) BIN=$2; shift 2 ;;
        --baseline-bin) BASE_BIN=$2; shift 2 ;;
        --fuse-server) FUSE_SERVER=1; shift ;;
        *) echo "usage: $0 [--runs N] [--lower DIR] [--work DIR] [--image FILE] [--image-size SIZE] [--no-image] [--rows LIST] [--no-provision] [--bin DIR] [--baseline-bin DIR] [--fuse-server]" >&2; exit 2 ;;
    esac
done
IMAGE=${IMAGE:-$WORK.img}

[ "$(id -u)" = 0 ] || { echo "bench: needs root" >&2; exit 1; }
[ -d "$LOWER" ] || { echo "bench: no lower tree at $LOWER" >&2; exit 1; }
for tool in fuse-overlayfs ostree python3; do
    command -v "$tool" > /dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done

REPO=$(cd "$(dirname "$0")/.." && pwd)
# --bin: pvfs-vm and pvfs-devtool from elsewhere (an earlier build, to compare)
if [ -n "$BIN" ]; then
    [ -x "$BIN/pvfs-vm" ] && [ -x "$BIN/pvfs-devtool" ] || { echo "bench: no pvfs-vm and pvfs-devtool in $BIN" >&2; exit 1; }
else
    # Always brought up to date (incremental): a stale build would measure old code.
    (cd "$REPO" && swift build -c release --product pvfs-vm >&2 && swift build -c release --product pvfs-devtool >&2)
    BIN=$REPO/.build/release
fi

STORE=$WORK/store
mkdir -p "$WORK"
MOUNTS=()
cleanup() {
    for m in "${MOUNTS[@]:-}"; do
        [ -n "$m" ] && mountpoint -q "$m" && umount "$m" 2>/dev/null || true
    done
    if [ -n "$USE_IMAGE" ] && mountpoint -q "$WORK"; then
        umount "$WORK" || true
        rm -f "$IMAGE"
    fi
}
trap cleanup EXIT

if [ -n "$USE_IMAGE" ]; then
    mountpoint -q "$WORK" && { echo "bench: $WORK is already a mount point" >&2; exit 1; }
    rm -f "$IMAGE"
    truncate -s "$IMAGE_SIZE" "$IMAGE"
    mkfs.ext4 -q -F "$IMAGE"
    mount -o loop "$IMAGE" "$WORK"
    cp -a "$LOWER" "$WORK/lower"
    LOWER=$WORK/lower
fi

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
if [ -n "$PROVISION" ] && [ ! -f "$WORK/ostree-repo/.bench-committed" ]; then
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

declare -A RESULTS   # key: row/system/run

measure_row() {  # row system mountpoint run
    local row=$1 system=$2 mnt=$3 run=$4
    drop_caches
    case $row in
        walk) RESULTS[walk/$system/$run]=$(timed walk "$mnt") ;;
        read) RESULTS[read/$system/$run]=$(timed read_all "$mnt") ;;
        create_unlink) RESULTS[create_unlink/$system/$run]=$(timed create_unlink "$mnt") ;;
        seq_write) RESULTS[seq_write/$system/$run]=$(timed seq_write "$mnt") ;;
        # reads what seq_write wrote
        seq_read) [ -f "$mnt/bench-big" ] || seq_write "$mnt"; drop_caches
                  RESULTS[seq_read/$system/$run]=$(timed seq_read "$mnt") ;;
        *) echo "bench: unknown row $row" >&2; exit 2 ;;
    esac
}

# Columns: pvfs (default: each change in the catalog before its reply), pvfs-grouped (its
# --grouped-commit: changes committed a few ms later, many per transaction), [pvfs-srv,]
# [pvfs-base,] fuse-overlayfs, kernel overlayfs.
SYSTEMS=(pvfs grp)
[ -n "$FUSE_SERVER" ] && SYSTEMS+=(srv)
[ -n "$BASE_BIN" ] && SYSTEMS+=(base)
SYSTEMS+=(fuse kern)

print_table() {  # title, then "row value..." lines (one value per system) on stdin
    python3 -c '
import sys
title, systems = sys.argv[1], sys.argv[2].split()
names = {"pvfs": "pvfs", "grp": "pvfs-grp", "srv": "pvfs-srv", "base": "pvfs-base", "fuse": "fuse-ovl", "kern": "kernel-ovl"}
# Ratios: pvfs and pvfs-grouped against each peer; pvfs-srv against libfuse-served pvfs and fuse-overlayfs.
pairs = [(a, b) for a in ("pvfs", "grp") if a in systems for b in ("base", "fuse", "kern") if b in systems]
pairs += [("srv", b) for b in ("pvfs", "fuse") if "srv" in systems and b in systems]
print()
print(title)
print("%-16s" % "row" + "".join("%11s" % names[s] for s in systems) + "".join("%11s" % (a + "/" + b) for a, b in pairs))
for line in sys.stdin:
    name, *values = line.split()
    v = dict(zip(systems, (float(x) for x in values)))
    print("%-16s" % name + "".join("%11.3f" % v[s] for s in systems) + "".join("%11.2f" % (v[a] / v[b]) for a, b in pairs))
' "$1" "${SYSTEMS[*]}"
}

for run in $(seq 1 "$RUNS"); do
    # Provisioning a root: a pvfs VM, an ostree hardlink checkout, a full copy.
    vm="bench-$run-$$"
    RESULTS[provision/pvfs/$run]=$("$BIN/pvfs-devtool" provision --store "$STORE" --template minbase --name "$vm")
    if [ -n "$PROVISION" ]; then
        rm -rf "$WORK/checkout" "$WORK/copy"
        drop_caches; RESULTS[provision/fuse/$run]=$(timed ostree checkout --repo="$WORK/ostree-repo" minbase "$WORK/checkout")
        drop_caches; RESULTS[provision/kern/$run]=$(timed cp -a "$LOWER" "$WORK/copy")
        rm -rf "$WORK/checkout" "$WORK/copy"
    fi

    # All systems are mounted at once and each row runs on each of them in turn (starting with
    # a different one each run), so that a change in the machine's load hits all alike.
    declare -A MNT
    # pvfs (release build)
    mkdir -p "$WORK/pvfs-mnt"
    "$BIN/pvfs-vm" mount --store "$STORE" "$vm" "$WORK/pvfs-mnt"
    MOUNTS+=("$WORK/pvfs-mnt"); MNT[pvfs]=$WORK/pvfs-mnt
    "$BIN/pvfs-devtool" provision --store "$STORE" --template minbase --name "$vm-grp" > /dev/null
    mkdir -p "$WORK/grp-mnt"
    "$BIN/pvfs-vm" mount --grouped-commit --store "$STORE" "$vm-grp" "$WORK/grp-mnt"
    MOUNTS+=("$WORK/grp-mnt"); MNT[grp]=$WORK/grp-mnt
    if [ -n "$FUSE_SERVER" ]; then
        "$BIN/pvfs-devtool" provision --store "$STORE" --template minbase --name "$vm-srv" > /dev/null
        mkdir -p "$WORK/srv-mnt"
        "$BIN/pvfs-vm" mount --engine fuse-server --store "$STORE" "$vm-srv" "$WORK/srv-mnt"
        MOUNTS+=("$WORK/srv-mnt"); MNT[srv]=$WORK/srv-mnt
    fi
    if [ -n "$BASE_BIN" ]; then
        "$BIN/pvfs-devtool" provision --store "$STORE" --template minbase --name "$vm-base" > /dev/null
        mkdir -p "$WORK/base-mnt"
        "$BASE_BIN/pvfs-vm" mount --store "$STORE" "$vm-base" "$WORK/base-mnt"
        MOUNTS+=("$WORK/base-mnt"); MNT[base]=$WORK/base-mnt
    fi
    # fuse-overlayfs
    rm -rf "$WORK/fo-upper" "$WORK/fo-work"
    mkdir -p "$WORK/fo-upper" "$WORK/fo-work" "$WORK/fo-mnt"
    fuse-overlayfs -o "lowerdir=$LOWER,upperdir=$WORK/fo-upper,workdir=$WORK/fo-work" "$WORK/fo-mnt"
    MOUNTS+=("$WORK/fo-mnt"); MNT[fuse]=$WORK/fo-mnt
    # kernel overlayfs
    rm -rf "$WORK/ko-upper" "$WORK/ko-work"
    mkdir -p "$WORK/ko-upper" "$WORK/ko-work" "$WORK/ko-mnt"
    mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$WORK/ko-upper,workdir=$WORK/ko-work" "$WORK/ko-mnt"
    MOUNTS+=("$WORK/ko-mnt"); MNT[kern]=$WORK/ko-mnt

    n=${#SYSTEMS[@]}
    for row in "${ROWS[@]}"; do
        for i in $(seq 0 $((n - 1))); do
            system=${SYSTEMS[$(( (i + run - 1) % n ))]}
            measure_row "$row" "$system" "${MNT[$system]}" "$run"
        done
    done

    "$BIN/pvfs-vm" umount --store "$STORE" "$WORK/pvfs-mnt"
    "$BIN/pvfs-devtool" remove --store "$STORE" --name "$vm"
    "$BIN/pvfs-vm" umount --store "$STORE" "$WORK/grp-mnt"
    "$BIN/pvfs-devtool" remove --store "$STORE" --name "$vm-grp"
    if [ -n "$FUSE_SERVER" ]; then
        "$BIN/pvfs-vm" umount --store "$STORE" "$WORK/srv-mnt"
        "$BIN/pvfs-devtool" remove --store "$STORE" --name "$vm-srv"
    fi
    if [ -n "$BASE_BIN" ]; then
        "$BASE_BIN/pvfs-vm" umount --store "$STORE" "$WORK/base-mnt"
        "$BIN/pvfs-devtool" remove --store "$STORE" --name "$vm-base"
    fi
    umount "$WORK/fo-mnt"
    umount "$WORK/ko-mnt"

    {
        for row in "${ROWS[@]}"; do
            line=$row
            for system in "${SYSTEMS[@]}"; do line="$line ${RESULTS[$row/$system/$run]}"; done
            echo "$line"
        done
    } | print_table "run $run of $RUNS (seconds)"
    [ -z "$PROVISION" ] || echo "provision: pvfs VM ${RESULTS[provision/pvfs/$run]} s, ostree checkout ${RESULTS[provision/fuse/$run]} s, cp -a ${RESULTS[provision/kern/$run]} s"
done

median() { python3 -c 'import statistics, sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
{
    for row in "${ROWS[@]}"; do
        line="$row"
        for system in "${SYSTEMS[@]}"; do
            values=()
            for run in $(seq 1 "$RUNS"); do values+=("${RESULTS[$row/$system/$run]}"); done
            line="$line $(median "${values[@]}")"
        done
        echo "$line"
    done
} | print_table "medians of $RUNS runs (seconds)"
[ -n "$PROVISION" ] || exit 0
values=(); for run in $(seq 1 "$RUNS"); do values+=("${RESULTS[provision/pvfs/$run]}"); done; p=$(median "${values[@]}")
values=(); for run in $(seq 1 "$RUNS"); do values+=("${RESULTS[provision/fuse/$run]}"); done; o=$(median "${values[@]}")
values=(); for run in $(seq 1 "$RUNS"); do values+=("${RESULTS[provision/kern/$run]}"); done; c=$(median "${values[@]}")
echo "provision medians: pvfs VM $p s, ostree checkout $o s, cp -a $c s"
