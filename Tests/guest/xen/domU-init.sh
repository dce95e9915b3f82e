#!/bin/sh
# Tests/guest/xen/domU-init.sh: /init of the domUs of the Xen transport check (transport-check.sh,
# run-xen-9pfs.sh --transport-check). The role comes from the kernel command line (pvfsrole=):
#   main    mounts the share pvfs-xen-test-backend serves, lists, stats, reads, is refused a
#           write; then follows commands dom0 writes to data/cmd (recheck, stale, poweroff)
#   churn   mounts and reads in a loop until dom0 destroys the domain mid-session
#   hostile runs hostile-frontend, a misbehaving 9pfs frontend in userspace
# Results (lib/results.sh) go to the console (hvc0), which xenconsoled logs in dom0 and dom0
# copies to its own; dom0 prints PVFS-TEST-DONE.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /lib/pvfs/results.sh
ROLE=$(sed -n 's/.*pvfsrole=\([a-z]*\).*/\1/p' /proc/cmdline)
t() { echo "DOMU-$ROLE[$(cut -d' ' -f1 /proc/uptime)] $*"; }
t "init start"
for m in $(cat /modules/order); do insmod "/modules/$m.ko" || t "insmod $m FAILED"; done
phase() { xenstore-write data/phase "$1" || t "cannot write data/phase"; }
cmd() { xenstore-read data/cmd 2>/dev/null; }

if [ "$ROLE" = hostile ]; then
    mkdir -p /proc/xen
    /bin/hostile-frontend
    t "hostile-frontend exit $?"
    while true; do sleep 5; done
fi

mkdir -p /mnt
if mount -t 9p -o trans=xen,version=9p2000.L pvfs-root /mnt 2>/tmp/mount.err; then
    marker "$ROLE-mount" ok "$(grep ' /mnt ' /proc/mounts | cut -d' ' -f4)"
else
    marker "$ROLE-mount" fail "$(cat /tmp/mount.err)"
    phase mount-failed
    while true; do sleep 5; done
fi

# expect NAME WANT CMD...: CMD's output must be WANT
expect() {
    name=$1 want=$2
    shift 2
    got=$("$@" 2>&1)
    if [ "$got" = "$want" ]; then marker "$name" ok "$got"; else marker "$name" fail "got '$got', want '$want'"; fi
}
# check PREFIX: what the backend serves: hello.txt (from --file) and whoami, read-only.
check() {
    expect "$1-list" ". .. hello.txt whoami" sh -c "ls -a /mnt | tr '\n' ' ' | sed 's/ \$//'"
    expect "$1-stat" "size=16 mode=444 type=regular file" stat -c 'size=%s mode=%a type=%F' /mnt/hello.txt
    expect "$1-stat-root" "type=directory mode=555" stat -c 'type=%F mode=%a' /mnt
    expect "$1-read" hello-from-pvfs cat /mnt/hello.txt
    case $(cat /mnt/whoami 2>&1) in
    "domid="*" name=main devid=0 tag=pvfs-root "*) marker "$1-whoami" ok "$(cat /mnt/whoami)" ;;
    *) marker "$1-whoami" fail "$(cat /mnt/whoami 2>&1)" ;;
    esac
    expect "$1-statfs" "blocks=1024" stat -f -c 'blocks=%b' /mnt
    if sh -c 'echo x > /mnt/new' 2>/tmp/err; then
        marker "$1-write-refused" fail "a write to the read-only share succeeded"
    elif grep -q 'Read-only file system' /tmp/err; then
        marker "$1-write-refused" ok "$(cat /tmp/err)"
    else
        marker "$1-write-refused" fail "$(cat /tmp/err)"
    fi
}

if [ "$ROLE" = churn ]; then
    case $(cat /mnt/whoami 2>&1) in
    *"name=churn devid=0 "*) marker churn-whoami ok "$(cat /mnt/whoami)" ;;
    *) marker churn-whoami fail "$(cat /mnt/whoami 2>&1)" ;;
    esac
    phase busy
    n=0
    while true; do
        cat /mnt/hello.txt >/dev/null
        ls /mnt >/dev/null
        stat /mnt/whoami >/dev/null
        n=$((n + 1))
        [ $((n % 50)) -eq 0 ] && t "churn $n"
    done
fi

check main
phase mounted
while true; do
    case "$(cmd)" in
    recheck)
        xenstore-write data/cmd none
        check main-recheck
        phase rechecked
        ;;
    stale)
        # The backend was killed and restarted: the session is lost, and every request must fail
        # with EIO at once (no hang), after which the share unmounts.
        xenstore-write data/cmd none
        for what in ls cat; do
            start=$(cut -d' ' -f1 /proc/uptime)
            if [ $what = ls ]; then out=$(timeout 60 ls /mnt 2>&1); else out=$(timeout 60 cat /mnt/hello.txt 2>&1); fi
            rc=$?
            took=$(awk -v a="$(cut -d' ' -f1 /proc/uptime)" -v b="$start" 'BEGIN{print a-b}')
            case "$rc $out" in
            "0 "* | "124 "* | "143 "*) marker "main-stale-$what" fail "rc=$rc after ${took}s: $out" ;;
            *"I/O error"* | *"Input/output error"*) marker "main-stale-$what" ok "rc=$rc after ${took}s: $out" ;;
            *) marker "main-stale-$what" fail "rc=$rc after ${took}s, not EIO: $out" ;;
            esac
        done
        if timeout 60 umount /mnt 2>/tmp/umount.err; then marker main-stale-umount ok ""; else marker main-stale-umount fail "$(cat /tmp/umount.err)"; fi
        phase unmounted
        ;;
    poweroff)
        t "poweroff"
        poweroff -f
        ;;
    esac
    sleep 1
done
