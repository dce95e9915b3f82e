#!/bin/sh
# Tests/guest/bench-workload.sh DIR: the guest side of the 9P benchmarks (busybox sh in the guest;
# guest-init.sh runs it for pvfs.run=bench). Settings from the kernel command line:
#   pvfs.bench=FILES,MIB,ROUNDS   small files per round, large-file size, rounds (default 100,16,3)
# Per round: create FILES small files (4 KiB each), stat them all, unlink them all (in one
# process: pvfs-guest-helper smallfiles, else shell loops), write one
# MIB-MiB file sequentially (1 MiB blocks, fsync), drop caches, read it back sequentially.
# Prints "PVFS-BENCH round=R op=OP n=N seconds=S" lines and one result line per round
# (lib/results.sh).
DIR=${1:?usage: bench-workload.sh DIR}
. /lib/pvfs/results.sh
FILES=100 MIB=16 ROUNDS=3
for arg in $(cat /proc/cmdline); do
    case $arg in pvfs.bench=*) v=${arg#*=}; IFS=, read -r FILES MIB ROUNDS <<E
$v
E
    ;; esac
done
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.2f", a - b }'; }
head -c 4096 /dev/urandom >/tmp/small
W=$DIR/pvfs-bench
rm -rf "$W"
mkdir -p "$W" || { marker bench fail "cannot create $W"; exit 1; }
r=1
while [ "$r" -le "$ROUNDS" ]; do
    ok=1
    mkdir "$W/r$r"
    if [ -x /bin/pvfs-guest-helper ]; then
        # One process for the whole metadata phase (a fork costs more than the operation).
        out=$(/bin/pvfs-guest-helper smallfiles "$W/r$r" "$FILES")
        case $out in *OK) ;; *) ok=0 ;; esac
        set -- $out
        echo "PVFS-BENCH round=$r op=create n=$FILES seconds=$2"
        echo "PVFS-BENCH round=$r op=stat n=$FILES seconds=$4"
        echo "PVFS-BENCH round=$r op=unlink n=$FILES seconds=$6"
    else
        t=$(now); i=0
        while [ $i -lt "$FILES" ]; do cp /tmp/small "$W/r$r/f$i" || ok=0; i=$((i + 1)); done
        echo "PVFS-BENCH round=$r op=create n=$FILES seconds=$(since "$t")"
        t=$(now); i=0
        while [ $i -lt "$FILES" ]; do stat -c %s "$W/r$r/f$i" >/dev/null || ok=0; i=$((i + 1)); done
        echo "PVFS-BENCH round=$r op=stat n=$FILES seconds=$(since "$t")"
        t=$(now); i=0
        while [ $i -lt "$FILES" ]; do rm "$W/r$r/f$i" || ok=0; i=$((i + 1)); done
        echo "PVFS-BENCH round=$r op=unlink n=$FILES seconds=$(since "$t")"
    fi
    t=$(now)
    dd if=/dev/zero of="$W/r$r/large" bs=1M count="$MIB" conv=fsync 2>/tmp/dd.err || ok=0
    echo "PVFS-BENCH round=$r op=write n=$MIB seconds=$(since "$t")"
    sync; echo 3 >/proc/sys/vm/drop_caches
    t=$(now)
    n=$(dd if="$W/r$r/large" of=/dev/null bs=1M 2>&1 | sed -n 's/^\([0-9]*\)+0 records in/\1/p')
    [ "$n" = "$MIB" ] || ok=0
    echo "PVFS-BENCH round=$r op=read n=$MIB seconds=$(since "$t")"
    rm -rf "$W/r$r"
    if [ $ok = 1 ]; then marker "bench-round-$r" ok "$FILES files, $MIB MiB"; else marker "bench-round-$r" fail "(an operation failed; $(cat /tmp/dd.err | tail -1))"; fi
    r=$((r + 1))
done
rmdir "$W"
