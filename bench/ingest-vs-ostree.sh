#!/bin/bash
# Times `pvfs-template create --from TREE` (release build) against `ostree commit` of the same
# tree into a fresh bare repository on the same filesystem, alternating runs, and prints both
# medians and their ratio.
#
#   bench/ingest-vs-ostree.sh [--tree DIR] [--runs N] [--work DIR] [--jobs N] [--keep]
#
# TREE defaults to /srv/pvfs-cache/minbase when present, else a Debian 12 minbase tree built
# with debootstrap into WORK (default /var/tmp/pvfs-bench, which must be on the filesystem to
# measure). The tree is copied once into WORK without device nodes, fifos and sockets, which
# ostree cannot commit; its page cache is warmed so both tools read from memory.
#
# Every run writes into a new store / repository, and none is deleted until all runs are done:
# deleting thousands of files right before a run makes ext4's inode allocator (without a
# journal, as here) skip recently freed inodes one by one, which would measure the deletion,
# not the ingest.
set -euo pipefail

runs=5
tree=""
work=/var/tmp/pvfs-bench
keep=0
jobs=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tree) tree="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --jobs) jobs="--jobs $2"; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

here="$(cd "$(dirname "$0")/.." && pwd)"
command -v ostree >/dev/null || { echo "ostree is not installed (apt-get install ostree)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root: both tools must keep owners and device-free trees need root to copy" >&2; exit 1; }

echo "building pvfs-template (release)..." >&2
(cd "$here" && swift build -c release --product pvfs-template >/dev/null)
pvfs="$here/.build/release/pvfs-template"

mkdir -p "$work"
if [ -z "$tree" ]; then
    if [ -d /srv/pvfs-cache/minbase/usr ]; then
        tree=/srv/pvfs-cache/minbase
    else
        tree="$work/minbase"
        if [ ! -d "$tree/usr" ]; then
            echo "debootstrap --variant=minbase bookworm $tree ..." >&2
            debootstrap --variant=minbase bookworm "$tree" http://deb.debian.org/debian >/dev/null
        fi
    fi
fi

# A fresh directory per invocation; older ones (from --keep or an interrupted run) are deleted
# only at the end, for the reason given at the top.
workdir="$work/bench-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$workdir"
bench_tree="$workdir/tree"
cp -a --reflink=auto "$tree" "$bench_tree"
find "$bench_tree" \( -type b -o -type c -o -type p -o -type s \) -delete
entries=$(find "$bench_tree" | wc -l)
bytes=$(du -sb --apparent-size "$bench_tree" | cut -f1)
find "$bench_tree" -type f -print0 | xargs -0 cat > /dev/null
echo "tree: $tree -> $bench_tree: $entries entries, $((bytes / 1048576)) MiB; $runs runs each, alternating" >&2

# Each run records wall-clock and CPU (user + system) milliseconds. On a shared machine the CPU
# column is the steadier one: it does not count time spent waiting for other tenants' work.
declare -a pvfs_times ostree_times pvfs_cpu ostree_cpu
timed() {   # timed ARRAY_WALL ARRAY_CPU command...
    local wall_var=$1 cpu_var=$2; shift 2
    local out; out=$(mktemp)
    /usr/bin/time -f '%e %U %S' -o "$out" "$@" >/dev/null
    read -r e u s < "$out"; rm -f "$out"
    eval "$wall_var+=(\"$(awk -v e="$e" 'BEGIN {printf "%d", e * 1000}')\")"
    eval "$cpu_var+=(\"$(awk -v u="$u" -v s="$s" 'BEGIN {printf "%d", (u + s) * 1000}')\")"
}
run_pvfs() {
    local store="$workdir/runs/$1/pvfs-store"
    "$pvfs" list --store "$store" >/dev/null          # create the store outside the timing, like ostree init
    sync
    timed pvfs_times pvfs_cpu "$pvfs" create bench --store "$store" --from "$bench_tree" --quiet $jobs
}
run_ostree() {
    local repo="$workdir/runs/$1/ostree-repo"
    ostree init --mode=bare --repo="$repo"
    sync
    timed ostree_times ostree_cpu ostree commit --repo="$repo" --branch=bench --tree=dir="$bench_tree"
}

printf '%-5s %10s %10s %12s %12s\n' run "pvfs ms" "ostree ms" "pvfs cpu ms" "ostree cpu ms"
for i in $(seq 1 "$runs"); do
    mkdir -p "$workdir/runs/$i"
    if [ $((i % 2)) = 1 ]; then run_pvfs "$i"; run_ostree "$i"; else run_ostree "$i"; run_pvfs "$i"; fi
    printf '%-5s %10s %10s %12s %12s\n' "$i" "${pvfs_times[-1]}" "${ostree_times[-1]}" "${pvfs_cpu[-1]}" "${ostree_cpu[-1]}"
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v p="$1" -v o="$2" 'BEGIN {printf "%.2f", p / o}'; }
mp=$(median "${pvfs_times[@]}"); mo=$(median "${ostree_times[@]}")
cp=$(median "${pvfs_cpu[@]}"); co=$(median "${ostree_cpu[@]}")
echo "median wall: pvfs $mp ms, ostree $mo ms, ratio pvfs/ostree $(ratio "$mp" "$mo")"
echo "median cpu:  pvfs $cp ms, ostree $co ms, ratio pvfs/ostree $(ratio "$cp" "$co")"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"

if [ "$keep" = 0 ]; then
    find "$work" -mindepth 1 -maxdepth 1 -name 'bench-*' -exec rm -rf {} +
else
    echo "kept $workdir"
fi
