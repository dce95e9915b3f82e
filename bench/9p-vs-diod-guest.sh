#!/bin/sh
# bench/9p-vs-diod-guest.sh: /init of the guests of bench/9p-vs-diod.sh and
# bench/virtiofs-vs-virtiofsd.sh (busybox sh, PID 1).
#
# Mounts every server, /mnt/NAME each: 9P2000.L servers over TCP with the same options, virtio-fs
# devices by their tag. Runs the same rows against all, interleaved: for each repetition and each
# row, one server after the other; the order rotates between repetitions, so that each server
# takes each place in turn. Times are taken here, in the guest, and printed on the serial console:
#
#   BENCH-ROW <row> <server> <rep> <t0> <t1>      seconds since the epoch, nanosecond resolution
#   BENCH-DONE
#
# Kernel command line: bench.servers=diod,pvfsd[,...] bench.ports=P1,P2[,...] bench.anames=A1,A2[,...]
# (one mount per server, /mnt/NAME) bench.kinds=K1,K2[,...] (9p, the default, or virtiofs: then the
# server's aname is the device's tag and its port is unused) bench.msize=N bench.opts=a,b (9P
# mounts only) bench.files=N bench.mib=N bench.reps=N bench.rows=a,b,...
# The tar row extracts /bench/tree.tar (put into the initramfs by the host script, so the archive
# is read from guest memory and only the extraction reaches the server).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

finish() {
    echo "BENCH-DONE"
    sync
    poweroff -f
    sleep 5
    echo o >/proc/sysrq-trigger
}

SERVERS="diod,pvfsd" PORTS="" ANAMES="" KINDS="" MSIZE=65536 OPTS="" FILES=1000 MIB=32 REPS=5 ROWS="create,stat,readdir,lsl,unlink,write,read"
for arg in $(cat /proc/cmdline); do
    case $arg in
    bench.servers=*) SERVERS=${arg#*=} ;;
    bench.ports=*) PORTS=${arg#*=} ;;
    bench.anames=*) ANAMES=${arg#*=} ;;
    bench.kinds=*) KINDS=${arg#*=} ;;
    bench.msize=*) MSIZE=${arg#*=} ;;
    bench.opts=*) OPTS=${arg#*=} ;;
    bench.files=*) FILES=${arg#*=} ;;
    bench.mib=*) MIB=${arg#*=} ;;
    bench.reps=*) REPS=${arg#*=} ;;
    bench.rows=*) ROWS=${arg#*=} ;;
    esac
done

for m in $(cat /modules/order); do insmod "/modules/$m.ko" 2>/dev/null || echo "BENCH-INFO insmod $m failed"; done

SERVERS=$(echo "$SERVERS" | tr , ' ')
# kind_of N: how server number N is mounted.
kind_of() {
    k=$(echo "$KINDS" | tr , '\n' | sed -n "$1p")
    echo "${k:-9p}"
}
n=1 need_net=0
for s in $SERVERS; do
    [ "$(kind_of $n)" = 9p ] && need_net=1
    n=$((n + 1))
done
if [ "$need_net" = 1 ]; then
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    ip link set lo up
    ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ||
        { echo "BENCH-ERROR network"; finish; }
fi

n=1
for s in $SERVERS; do
    port=$(echo "$PORTS" | cut -d, -f$n)
    aname=$(echo "$ANAMES" | cut -d, -f$n)
    kind=$(kind_of $n)
    n=$((n + 1))
    mkdir -p "/mnt/$s"
    case $kind in
    9p)
        o="trans=tcp,port=$port,version=9p2000.L,aname=$aname,msize=$MSIZE"
        [ -n "$OPTS" ] && o="$o,$OPTS"
        mount -t 9p -o "$o" 10.0.2.2 "/mnt/$s" 2>/tmp/mount.err
        ;;
    virtiofs)
        o="tag $aname"
        mount -t virtiofs "$aname" "/mnt/$s" 2>/tmp/mount.err
        ;;
    *)
        o="kind $kind"
        echo "unknown mount kind" >/tmp/mount.err
        false
        ;;
    esac
    if [ $? != 0 ]; then
        echo "BENCH-ERROR mount $s $o: $(cat /tmp/mount.err)"
        finish
    fi
    echo "BENCH-INFO mounted $s: $(grep " /mnt/$s " /proc/mounts)"
    rm -rf "/mnt/$s/bench9p"
    mkdir "/mnt/$s/bench9p" || { echo "BENCH-ERROR mkdir on $s"; finish; }
done

now() { /bin/9p-guest-bench now; }

# run_row ROW SERVER: the row's work against /mnt/SERVER/bench9p.
run_row() {
    d=/mnt/$2/bench9p
    case $1 in
    create) 9p-guest-bench create "$d/small" "$FILES" ;;
    stat) 9p-guest-bench stat "$d/small" "$FILES" ;;
    readdir) 9p-guest-bench readdir "$d/small" >/dev/null ;;
    lsl) 9p-guest-bench lsl "$d/small" >/dev/null ;;
    unlink) 9p-guest-bench unlink "$d/small" "$FILES" ;;
    write) dd if=/dev/zero of="$d/big" bs=1M count="$MIB" conv=fsync 2>/dev/null ;;
    read) dd if="$d/big" of=/dev/null bs=1M 2>/dev/null && rm -f "$d/big" ;;
    tar) mkdir "$d/tar" && tar -xf /bench/tree.tar -C "$d/tar" ;;
    *) echo "unknown row $1" >&2; false ;;
    esac
}

# after_row ROW SERVER: untimed cleanup, so that every repetition starts alike.
after_row() {
    case $1 in
    tar) rm -rf "/mnt/$2/bench9p/tar" ;;
    esac
}

# A warm-up round (not reported): first touches of the servers, the benchmark program in the page cache.
for s in $SERVERS; do
    9p-guest-bench create "/mnt/$s/bench9p/warm" 50 && 9p-guest-bench stat "/mnt/$s/bench9p/warm" 50 &&
        9p-guest-bench unlink "/mnt/$s/bench9p/warm" 50 || echo "BENCH-ERROR warm-up on $s"
done

rep=1
while [ "$rep" -le "$REPS" ]; do
    # Rotate: repetition r starts with server number r (mod the count).
    set -- $SERVERS
    k=$(((rep - 1) % $#))
    order=""
    i=0
    for s in $SERVERS; do
        if [ $i -ge $k ]; then order="$order $s"; fi
        i=$((i + 1))
    done
    i=0
    for s in $SERVERS; do
        if [ $i -lt $k ]; then order="$order $s"; fi
        i=$((i + 1))
    done
    for row in $(echo "$ROWS" | tr , ' '); do
        for s in $order; do
            sync
            echo 3 >/proc/sys/vm/drop_caches
            t0=$(now)
            if run_row "$row" "$s"; then
                t1=$(now)
                echo "BENCH-ROW $row $s $rep $t0 $t1"
            else
                echo "BENCH-ERROR $row $s $rep"
            fi
            after_row "$row" "$s"
        done
    done
    rep=$((rep + 1))
done

for s in $SERVERS; do
    rm -rf "/mnt/$s/bench9p"
    umount "/mnt/$s" || echo "BENCH-ERROR umount $s"
done
finish
