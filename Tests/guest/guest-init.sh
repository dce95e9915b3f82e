#!/bin/sh
# Tests/guest/guest-init.sh: /init of the test initramfs (busybox sh, PID 1 in the guest).
#
# Loads the modules listed in /modules/order, mounts a 9P2000.L share (or a virtio-fs device)
# on /mnt and runs /fileops.sh against it, then prints PVFS-TEST-DONE and powers the guest off. Everything
# it needs comes from the kernel command line, so one image serves every test:
#
#   pvfs.trans=tcp|xen|virtiofs  transport (default tcp)
#   pvfs.server=ADDR        tcp: server address (default 10.0.2.2, QEMU user net's host)
#   pvfs.port=PORT          tcp: server port (default 564)
#   pvfs.aname=NAME         9P attach name (diod: exported path; pvfsd: VM name)
#   pvfs.tag=TAG            xen: the 9pfs device tag; virtiofs: the device's tag (default pvfs)
#   pvfs.msize=BYTES        9P msize (default: the kernel's)
#   pvfs.opts=a,b=c         extra mount options
#   pvfs.ip=ADDR/PREFIX     tcp: guest address (default 10.0.2.15/24), pvfs.gw= (default 10.0.2.2)
#   pvfs.quota=BYTES        expected quota of the share: enables the df and EDQUOT checks
#   pvfs.quotaerr=ENAME     errno expected past the quota (default EDQUOT; ENOSPC for a small fs)
#   pvfs.skip=a,b           fileops checks to skip (reported as skip)
#   pvfs.large=MIB          size of the large-file check (default 16)
#   pvfs.readdir=N          files the readdir check creates (default 300)
#   pvfs.run=fileops|posix|shell|bench|restart|upgrade
#                           posix = the POSIX suite (posix/pvfs-posix-suite.c) once on an ext4
#                           filesystem of the guest's own (/local.img, loop-mounted) and once on
#                           the share; both results go to the console as "PVFS-POSIX local|9p
#                           CASE OUTCOME" lines for the host to compare (posix-compare.sh);
#                           pvfs.posixargs=-q runs the smaller matrices;
#                           shell = interactive shell on the console after mounting (debugging);
#                           bench = the benchmark workload (bench-workload.sh, pvfs.bench=);
#                           restart = the server is killed and restarted while the share is
#                           mounted (restart_check below; the host side restarts it when the
#                           console shows PVFS-RESTART-REQUEST)
#                           upgrade = a loop of creates, checksummed writes, renames and unlinks
#                           while the host upgrades pvfsd in place (upgrade_loop below; the host
#                           starts when the console shows PVFS-UPGRADE-READY)
#   pvfs.restartwait=SECONDS restart: how long the share stays idle for the restart (default 40)
#   pvfs.loopsecs=SECONDS   upgrade: how long the loop runs (default 60)
#   pvfs.probe=ADDR:PORT:ANAME  tcp: after mounting, try to mount another 9P share (another VM's
#                           listener) too; pvfs.probeexpect=unreachable|reachable says which
#                           outcome passes (marker "probe")
#   pvfs.watch=SECONDS      debugging: every SECONDS print the kernel stacks of processes
#                           blocked in the kernel (PVFS-WATCH lines), to tell slow from stuck
#
# Results: "PVFS-TEST <name> ok|fail|skip <detail>" and finally "PVFS-TEST-DONE" (lib/results.sh).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

uptime_s() { cut -d' ' -f1 /proc/uptime; }
. /lib/pvfs/results.sh # marker, marker_done: the result format (Tests/guest/lib/results.sh)
finish() {
    marker_done "uptime=$(uptime_s)"
    sync
    poweroff -f
    sleep 5
    echo o >/proc/sysrq-trigger
}

TRANS=tcp SERVER=10.0.2.2 PORT=564 ANAME="" TAG=pvfs MSIZE="" OPTS="" IP=10.0.2.15/24 GW=10.0.2.2
QUOTA="" QUOTAERR=EDQUOT SKIP="" LARGE=16 NDIR=300 RUN=fileops WATCH="" RESTART_WAIT=40 POSIXARGS="" PROBE="" PROBE_EXPECT=unreachable
LOOP_SECS=60
for arg in $(cat /proc/cmdline); do
    case $arg in
    pvfs.trans=*) TRANS=${arg#*=} ;;
    pvfs.server=*) SERVER=${arg#*=} ;;
    pvfs.port=*) PORT=${arg#*=} ;;
    pvfs.aname=*) ANAME=${arg#*=} ;;
    pvfs.tag=*) TAG=${arg#*=} ;;
    pvfs.msize=*) MSIZE=${arg#*=} ;;
    pvfs.opts=*) OPTS=${arg#*=} ;;
    pvfs.ip=*) IP=${arg#*=} ;;
    pvfs.gw=*) GW=${arg#*=} ;;
    pvfs.quota=*) QUOTA=${arg#*=} ;;
    pvfs.quotaerr=*) QUOTAERR=${arg#*=} ;;
    pvfs.skip=*) SKIP=${arg#*=} ;;
    pvfs.large=*) LARGE=${arg#*=} ;;
    pvfs.readdir=*) NDIR=${arg#*=} ;;
    pvfs.run=*) RUN=${arg#*=} ;;
    pvfs.watch=*) WATCH=${arg#*=} ;;
    pvfs.restartwait=*) RESTART_WAIT=${arg#*=} ;;
    pvfs.loopsecs=*) LOOP_SECS=${arg#*=} ;;
    pvfs.posixargs=*) POSIXARGS=${arg#*=} ;;
    pvfs.probe=*) PROBE=${arg#*=} ;;
    pvfs.probeexpect=*) PROBE_EXPECT=${arg#*=} ;;
    esac
done
echo "PVFS-INFO init start uptime=$(uptime_s) kernel=$(uname -r) trans=$TRANS"

for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" 2>/tmp/insmod.err || echo "PVFS-INFO insmod $m: $(cat /tmp/insmod.err)"
done

if [ "$TRANS" = tcp ]; then
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    ip link set lo up
    if ip link set eth0 up && ip addr add "$IP" dev eth0 && ip route add default via "$GW"; then
        marker network ok "eth0 $IP gw $GW"
    else
        marker network fail "could not configure eth0"
        finish
    fi
    source="$SERVER"
    mopts="trans=tcp,port=$PORT,version=9p2000.L"
elif [ "$TRANS" = virtiofs ]; then
    source="$TAG"
    mopts=""
else
    source="$TAG"
    mopts="trans=xen,version=9p2000.L"
fi
fstype=9p
if [ "$TRANS" = virtiofs ]; then
    fstype=virtiofs
    [ -n "$OPTS" ] && mopts="$OPTS"
else
    [ -n "$ANAME" ] && mopts="$mopts,aname=$ANAME"
    [ -n "$MSIZE" ] && mopts="$mopts,msize=$MSIZE"
    [ -n "$OPTS" ] && mopts="$mopts,$OPTS"
fi

mkdir -p /mnt
t0=$(uptime_s)
if mount -t "$fstype" ${mopts:+-o "$mopts"} "$source" /mnt 2>/tmp/mount.err; then
    marker mount ok "$source $mopts ($(grep ' /mnt ' /proc/mounts | cut -d' ' -f4))"
else
    marker mount fail "$source $mopts: $(cat /tmp/mount.err) $(dmesg | grep -iE '9p|fuse|virtio' | tail -3 | tr '\n' ' ')"
    finish
fi

# Can this guest reach a share it is not meant to (another VM's listener on the host)?
if [ -n "$PROBE" ]; then
    paddr=${PROBE%%:*} prest=${PROBE#*:}
    pport=${prest%%:*} paname=${prest#*:}
    mkdir -p /probe
    if timeout 20 mount -t 9p -o "trans=tcp,port=$pport,version=9p2000.L,aname=$paname" "$paddr" /probe 2>/tmp/probe.err; then
        outcome=reachable detail="mounted $paname from $paddr:$pport"
        umount /probe
    else
        outcome=unreachable detail="$paddr:$pport: $(cat /tmp/probe.err)"
    fi
    if [ "$outcome" = "$PROBE_EXPECT" ]; then
        marker probe ok "$outcome: $detail"
    else
        marker probe fail "$outcome (expected $PROBE_EXPECT): $detail"
    fi
fi

if [ -n "$WATCH" ]; then
    (
        while sleep "$WATCH"; do
            for d in /proc/[0-9]*; do
                st=$(cut -d' ' -f3 "$d/stat" 2>/dev/null)
                w=$(cat "$d/wchan" 2>/dev/null)
                case "$st:$w" in D:* | *:*p9* | *:*9p*)
                    echo "PVFS-WATCH $(uptime_s) pid ${d#/proc/} $(cat "$d/comm") $st $w: $(sed 's/+0x[0-9a-f/x]*//' "$d/stack" 2>/dev/null | cut -d' ' -f2 | head -8 | tr '\n' ' ')"
                    ;;
                esac
            done
        done
    ) &
fi

# pvfs.run=restart: the server is killed (SIGKILL) and restarted while the share is mounted and
# idle. What was written before stays (the host checks it); afterwards a request fails with EIO
# at once instead of hanging (Linux's 9pnet_xen cannot resume a 9P session), and the share
# unmounts.
restart_check() {
    probe="pvfs restart probe $(uptime_s)"
    if echo "$probe" >"$1/restart-probe" && [ "$(cat "$1/restart-probe")" = "$probe" ]; then
        marker restart-before ok "wrote and read back $1/restart-probe"
    else
        marker restart-before fail "cannot write $1/restart-probe"
        return
    fi
    echo "PVFS-RESTART-REQUEST uptime=$(uptime_s)"
    sleep "$RESTART_WAIT"
    rm -f /tmp/restart.rc
    (stat "$1/restart-probe" >/tmp/restart.out 2>&1; echo $? >/tmp/restart.rc) &
    i=0
    while [ ! -s /tmp/restart.rc ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
    if [ ! -s /tmp/restart.rc ]; then
        marker restart-eio fail "stat still blocked after 60 s"
        return
    elif [ "$(cat /tmp/restart.rc)" = 0 ]; then
        marker restart-eio fail "stat succeeded: the server was not restarted within ${RESTART_WAIT}s"
    elif grep -qiE "input/output error|I/O error" /tmp/restart.out; then
        marker restart-eio ok "$(cat /tmp/restart.out)"
    else
        marker restart-eio fail "$(cat /tmp/restart.out)"
    fi
    if umount "$1" 2>/tmp/umount.err; then
        marker restart-umount ok ""
    else
        marker restart-umount fail "$(cat /tmp/umount.err)"
    fi
}

# pvfs.run=upgrade: for LOOP_SECS seconds, create files of varied sizes, checksum them, rename
# them into place, read them back and unlink every third, while the host upgrades pvfsd under the
# mounted share. A journal stays open for appending the whole time and an unlinked file stays
# open for reading: both must survive every hand-over. Any failed command is an error; at the
# end every file left must still have its checksum.
upgrade_loop() {
    d=$1/upgrade-loop
    rm -rf "$d"
    mkdir -p "$d" || { marker upgrade-loop fail "cannot make $d"; return; }
    printf 'kept open and unlinked\n' >"$d/ghost" && exec 4<"$d/ghost" && rm "$d/ghost" ||
        { marker upgrade-loop fail "cannot set up the unlinked open file"; return; }
    exec 3>>"$d/journal" || { marker upgrade-loop fail "cannot open the journal"; return; }
    : >/tmp/sums
    errors=0 n=0 removed=0
    end=$(echo "$(uptime_s) + $LOOP_SECS" | bc | cut -d. -f1)
    echo "PVFS-UPGRADE-READY uptime=$(uptime_s)"
    while [ "$(uptime_s | cut -d. -f1)" -lt "$end" ]; do
        n=$((n + 1))
        size=$(( (n * 7919) % 200000 + 1 ))
        if ! head -c "$size" /dev/urandom >"$d/new.$n"; then errors=$((errors + 1)); echo "PVFS-INFO loop $n: write failed"; continue; fi
        sum=$(sha256sum <"$d/new.$n" | cut -d' ' -f1)
        if ! mv "$d/new.$n" "$d/file.$n"; then errors=$((errors + 1)); echo "PVFS-INFO loop $n: rename failed"; continue; fi
        got=$(sha256sum <"$d/file.$n" | cut -d' ' -f1)
        [ "$got" = "$sum" ] || { errors=$((errors + 1)); echo "PVFS-INFO loop $n: read back $got, wrote $sum"; }
        echo "file.$n $sum" >>/tmp/sums
        echo "entry $n" >&3 || { errors=$((errors + 1)); echo "PVFS-INFO loop $n: journal append failed"; }
        if [ $((n % 3)) = 0 ]; then
            if rm "$d/file.$((n - 1))"; then
                removed=$((removed + 1))
                grep -v "^file.$((n - 1)) " /tmp/sums >/tmp/sums.new && mv /tmp/sums.new /tmp/sums
            else
                errors=$((errors + 1)); echo "PVFS-INFO loop $n: unlink failed"
            fi
        fi
    done
    exec 3>&-
    bad=0
    while read -r name sum; do
        [ "$(sha256sum <"$d/$name" | cut -d' ' -f1)" = "$sum" ] || { bad=$((bad + 1)); echo "PVFS-INFO $name: checksum differs at the end"; }
    done </tmp/sums
    lines=$(wc -l <"$d/journal")
    ghost=$(cat <&4)
    exec 4<&-
    left=$(ls "$d" | grep -c '^file\.')
    detail="$n rounds, $removed unlinked, $left files checked, journal $lines lines, errors $errors, bad sums $bad"
    if [ "$errors" = 0 ] && [ "$bad" = 0 ] && [ "$lines" = "$n" ] && [ "$ghost" = "kept open and unlinked" ] &&
        [ "$left" = "$(wc -l </tmp/sums)" ] && [ "$n" -gt 0 ]; then
        marker upgrade-loop ok "$detail"
    else
        marker upgrade-loop fail "$detail, unlinked open file read '$ghost'"
    fi
    echo "PVFS-UPGRADE-DONE uptime=$(uptime_s)"
}

# pvfs.run=posix: the suite on the guest's own ext4, then on the share, each in a fresh directory.
posix_run() { # posix_run LABEL DIR
    rm -rf "$2"
    mkdir -p "$2" || { marker "posix-$1" fail "cannot make $2"; return; }
    t=$(uptime_s)
    # shellcheck disable=SC2086
    /bin/pvfs-posix-suite $POSIXARGS "$2" >/tmp/posix.out 2>/tmp/posix.err
    rc=$?
    sed "s/^/PVFS-POSIX $1 /" /tmp/posix.out
    end=$(grep '^END ' /tmp/posix.out)
    if [ $rc = 0 ] && [ -n "$end" ]; then
        marker "posix-$1" ok "${end#END } cases in $(echo "$(uptime_s) - $t" | bc) s"
    else
        marker "posix-$1" fail "exit $rc: $(tail -3 /tmp/posix.err | tr '\n' ' ')"
    fi
}

if [ "$RUN" = posix ]; then
    mkdir -p /local
    if mount -t ext4 -o loop /local.img /local 2>/tmp/local.err; then
        marker posix-local-mount ok "ext4 $(grep ' /local ' /proc/mounts | cut -d' ' -f4)"
        posix_run local /local/posix
        umount /local
    else
        marker posix-local-mount fail "$(cat /tmp/local.err)"
    fi
    posix_run 9p /mnt/posix
elif [ "$RUN" = restart ]; then
    restart_check /mnt
    finish
elif [ "$RUN" = upgrade ]; then
    upgrade_loop /mnt
elif [ "$RUN" = shell ]; then
    echo "PVFS-INFO share on /mnt; exit the shell to power off"
    setsid cttyhack sh
elif [ "$RUN" = bench ]; then
    /bin/sh /bench.sh /mnt
else
    PVFS_QUOTA="$QUOTA" PVFS_QUOTA_ERR="$QUOTAERR" PVFS_SKIP="$SKIP" PVFS_LARGE_MIB="$LARGE" PVFS_READDIR="$NDIR" /bin/sh /fileops.sh /mnt
fi
echo "PVFS-INFO fileops took $(echo "$(uptime_s) - $t0" | bc) s"

sync
if umount /mnt 2>/tmp/umount.err; then
    marker umount ok ""
else
    marker umount fail "$(cat /tmp/umount.err)"
fi
finish
