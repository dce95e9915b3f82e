#!/bin/sh
# dom0 /init of the nested-Xen end-to-end test of pvfs's Xen 9pfs backend.
# Prints "E2E: PASS <check>" / "E2E: FAIL <check>" lines and "E2E: RESULT ..." at the end.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/lib/xen-4.17/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
up() { cut -d' ' -f1 /proc/uptime; }
t() { echo "E2E[$(up)] $*"; }
FAILS=0
pass() { echo "E2E: PASS $*"; }
fail() { echo "E2E: FAIL $*"; FAILS=$((FAILS + 1)); }
check() { name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }

for m in $(cat /modules/order); do insmod /modules/$m || t "insmod $m FAILED"; done
mkdir -p /proc/xen /var/run/xen /var/run/xenstored /var/lib/xenstored /var/lib/xen /var/log/xen/console
mount -t xenfs xenfs /proc/xen
xenstored --pid-file /var/run/xen/xenstored.pid
i=0; while [ ! -f /var/run/xen/xenstored.pid ] && [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done
xen-init-dom0 > /dev/null && t "xen-init-dom0 ok"
xenconsoled --pid-file=/var/run/xen/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
t "toolstack up; cpu flags: $(grep -m1 -oE 'fsgsbase|pcid|invpcid|smep|smap|pku' /proc/cpuinfo | tr '\n' ' ')"

PV=/bin/pvfs-vm
BE=/local/domain/0/backend/9pfs
now() { cut -d. -f1 /proc/uptime; }
# wait_xs PATH VALUE SECONDS: waits until the node holds VALUE
wait_xs() {
  end=$(( $(now) + $3 ))
  while [ "$(now)" -lt $end ]; do
    [ "$(xenstore-read "$1" 2>/dev/null)" = "$2" ] && return 0
    usleep 300000
  done
  t "timeout waiting for $1=$2 (is: $(xenstore-read "$1" 2>&1))"
  return 1
}
# wait_log FILE PATTERN SECONDS
wait_log() {
  end=$(( $(now) + $3 ))
  while [ "$(now)" -lt $end ]; do
    grep -q "$2" "$1" 2>/dev/null && return 0
    usleep 300000
  done
  t "timeout waiting for '$2' in $1"
  return 1
}
# Guest consoles (xenconsoled logs) stream to this console as they are written.
follow_console() { touch /var/log/xen/console/guest-$1.log; tail -F /var/log/xen/console/guest-$1.log 2>/dev/null & }
start_backend() {
  SWIFT_BACKTRACE=enable=yes,interactive=no,color=no,threads=all,swift-backtrace=/bin/swift-backtrace \
  $PV xen-serve-test --file hello.txt=hello-from-pvfs --refuse-tag refused --log-level info \
    > /var/log/pvfs-backend-$1.log 2>&1 &
  BPID=$!
  tail -F /var/log/pvfs-backend-$1.log 2>/dev/null | sed "s/^/[backend-$1] /" &
  wait_log /var/log/pvfs-backend-$1.log "backend running" 60
}

if grep -q 'pvfse2e=mmstress' /proc/cmdline; then
  # Control experiment: memory-management churn in dom0 without any Xen device.
  /bin/mmstress > /dev/null &
  end=$(( $(now) + 150 ))
  n=0
  while [ "$(now)" -lt $end ]; do n=$((n + 1)); x=$(xenstore-read /local/domain/0/name); usleep 100000; done
  t "forked $n subshells under mmstress"
  dmesg | grep -E 'segfault|traps:|general protection' && fail dom0-process-crashed || pass no-dom0-crash
  reboot -f
fi
t "starting backend"
check backend-started start_backend 1
T0=$(up)

# The backend and this script must not starve behind three booting guests under emulation.
xl sched-credit -d 0 -w 1024
for d in main churn hostile; do
  follow_console $d
  xl create -p /guest/$d.cfg > /var/log/xen/xl-create-$d.log 2>&1 || { t "xl create $d failed"; tail -20 /var/log/xen/xl-create-$d.log; }
done
M=$(xl domid main); C=$(xl domid churn); H=$(xl domid hostile)
t "domains: main=$M churn=$C hostile=$H"
check attach-main $PV attach vm-main --domid $M
check attach-churn $PV attach vm-churn --domid $C --json
n=0
grep -qE 'pvfse2e=(qemu-)?destroy' /proc/cmdline ||
for s in nr0 nr100 nrabc refabc refbad order20 order0 evbad ver2 refused malformed jump huge; do
  $PV attach vm-hostile --domid $H --devid $n --tag $s > /dev/null || fail "attach-hostile-$s"
  n=$((n + 1))
done
check attach-twice-refused sh -c "! $PV attach vm-main --domid $M --devid 0 2>/dev/null"
check attach-unknown-domain sh -c "! $PV attach vm-x --domid 4242 2>/dev/null"
check backend-initwait wait_xs $BE/$M/0/state 2 30
xenstore-ls -fp $BE/$M 2>&1
xenstore-ls -fp /local/domain/$M/device/9pfs 2>&1
$PV xl-config vm-main --kernel /guest/vmlinuz --initrd /guest/guest-initrd.gz --memory 128 > /tmp/vm-main.cfg
check xl-config grep -q 'rootflags=trans=xen,version=9p2000.L' /tmp/vm-main.cfg
cat /tmp/vm-main.cfg

# Started one after the other: three kernels booting at once crawl under nested emulation.
if grep -q 'pvfse2e=qemu-destroy' /proc/cmdline; then
  # Control experiment: QEMU's 9pfs backend instead of pvfs for the churn domain.
  kill $BPID
  mkdir -p /tmp/share; echo hello > /tmp/share/hello.txt; echo qemu > /tmp/share/whoami
  xenstore-write $BE/$C/0/path /tmp/share
  /usr/libexec/xen-qemu-system-i386 -xen-domid $C -xen-attach -machine xenpv -nodefaults -no-user-config \
    -display none -m 256 > /var/log/qemu-backend.log 2>&1 &
  xl unpause churn
  check churn-busy wait_xs /local/domain/$C/data/phase busy 300
  sleep 5
  t "destroying churn mid-session (QEMU backend)"
  xl destroy churn
  sleep 20
  xl list
  dmesg | grep -E 'segfault|traps|general protection' && fail dom0-process-crashed || pass no-dom0-crash
  cat /var/log/qemu-backend.log | tail
  reboot -f
fi
if grep -q 'pvfse2e=destroy' /proc/cmdline; then
  xl unpause churn
  check churn-busy wait_xs /local/domain/$C/data/phase busy 300
  sleep 5
  t "destroying churn mid-session"
  xl destroy churn
  sleep 20
  xl list
  check backend-alive-after-destroy kill -0 $BPID
  dmesg | grep -E 'segfault|traps|general protection' && fail dom0-process-crashed || pass no-dom0-crash
  reboot -f
fi
xl unpause main
t "main unpaused"
check main-mounted wait_xs /local/domain/$M/data/phase mounted 300
xl unpause churn
t "churn unpaused"
check churn-busy wait_xs /local/domain/$C/data/phase busy 300
check two-domains-connected sh -c "[ \$(xenstore-read $BE/$M/0/state) = 4 ] && [ \$(xenstore-read $BE/$C/0/state) = 4 ]"
T1=$(up)
t "two domUs mounted after $(awk -v a="$T1" -v b="$T0" 'BEGIN{print a-b}')s"
xl unpause hostile
t "hostile unpaused"
check hostile-done wait_xs /local/domain/$H/data/phase done 400
check hostile-scenarios wait_xs /local/domain/$H/data/hostile pass 5
check backend-survived-hostile kill -0 $BPID
for n in 0 1 2 3 4 5 6 7 8 9 10 11 12; do
  echo "hostile device $n: tag=$(xenstore-read $BE/$H/$n/tag) state=$(xenstore-read $BE/$H/$n/state) error=$(xenstore-read $BE/$H/$n/error 2>/dev/null)"
done

t "destroying churn mid-session"
TD=$(up)
xl destroy churn
end=$(( $(now) + 60 ))
while [ "$(now)" -lt $end ]; do
  xl list | grep -qE "churn|\(null\)" || break
  usleep 300000
done
xl list
check churn-gone-no-zombie sh -c "! xl list | grep -qE 'churn|\(null\)'"
t "churn fully destroyed after $(awk -v a="$(up)" -v b="$TD" 'BEGIN{print a-b}')s"
check churn-teardown-logged wait_log /var/log/pvfs-backend-1.log "device $C/0: rings unmapped" 10
check churn-nodes-removed sh -c "! xenstore-read $BE/$C/0/state 2>/dev/null"

xenstore-write /local/domain/$M/data/cmd recheck
check main-still-serving wait_xs /local/domain/$M/data/phase rechecked 120
check backend-still-alive kill -0 $BPID

t "killing the backend (SIGKILL) while main has the share mounted"
kill -9 $BPID
wait $BPID 2>/dev/null
check backend-restarted start_backend 2
check lost-session-adopted wait_log /var/log/pvfs-backend-2.log "device $M/0: adopted a connected frontend" 30
xenstore-read $BE/$M/0/error
check lost-session-error-node sh -c "xenstore-read $BE/$M/0/error | grep -q 'session lost'"
xenstore-write /local/domain/$M/data/cmd stale
check main-unmounted wait_xs /local/domain/$M/data/phase unmounted 240

t "detaching main's device"
$PV detach vm-main --domid $M > /tmp/detach.out 2>&1
cat /tmp/detach.out
check detach-closed-by-backend grep -q '^detached vm-main device 0' /tmp/detach.out
check detach-nodes-removed sh -c "! xenstore-read $BE/$M/0/state 2>/dev/null && ! xenstore-read /local/domain/$M/device/9pfs/0/state 2>/dev/null"
check detach-logged wait_log /var/log/pvfs-backend-2.log "device $M/0: removed" 10

t "stopping the backend (SIGTERM)"
kill -TERM $BPID
end=$(( $(now) + 30 )); while kill -0 $BPID 2>/dev/null && [ "$(now)" -lt $end ]; do usleep 100000; done
check backend-stopped-cleanly sh -c "! kill -0 $BPID 2>/dev/null && grep -q 'xen 9pfs backend stopped' /var/log/pvfs-backend-2.log"

xenstore-write /local/domain/$M/data/cmd poweroff
sleep 3
# Any crashed dom0 process (the backend, the toolstack, this script's helpers) fails the run.
if dmesg | grep -E 'segfault|traps:|general protection'; then fail no-dom0-process-crashed; else pass no-dom0-process-crashed; fi
xl destroy hostile 2>/dev/null
xl list

if [ $FAILS -eq 0 ]; then echo "E2E: RESULT PASS"; else echo "E2E: RESULT FAIL ($FAILS failed)"; fi
reboot -f
