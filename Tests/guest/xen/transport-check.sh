# shellcheck shell=sh
# Tests/guest/xen/transport-check.sh: the Xen transport on its own, in dom0 (busybox sh). Sourced
# by dom0-init.sh when run-xen-9pfs.sh --transport-check sets XEN_SCENARIO=transport, once the
# toolstack is up; it uses dom0-init.sh's t and the result format (marker, marker_check).
#
# pvfs-xen-test-backend (PVFSTransport's Xen backend serving NineDiagnosticResponder, a tiny
# read-only 9P server, instead of pvfsd's) runs in dom0, and three PV domUs are created paused,
# their devices attached with `pvfs-vm attach` (domU-init.sh is their /init):
#   main     mounts, lists, stats, reads (the files the backend serves), a write is refused
#   churn    reads in a loop until it is destroyed mid-session
#   hostile  hostile-frontend.c: garbage in xenstore and in the rings, 13 scenarios, one device each
# Checked: attach/detach and their refusals, xl-config, every domU served, each hostile device
# failing alone while the backend keeps serving, a destroyed domain torn down without a zombie,
# the backend killed (SIGKILL) and restarted answering the surviving mount with EIO (lost
# session), `pvfs-vm detach`, SIGTERM, and no process crashed in dom0.
# Binaries in dom0: /usr/local/bin/pvfs-xen-test-backend and /usr/local/bin/pvfs-vm.

PV=pvfs-vm
BE=/local/domain/0/backend/9pfs
now_s() { cut -d. -f1 /proc/uptime; }
# wait_xs PATH VALUE SECONDS: waits until the node holds VALUE
wait_xs() {
    end=$(($(now_s) + $3))
    while [ "$(now_s)" -lt $end ]; do
        [ "$(xenstore-read "$1" 2>/dev/null)" = "$2" ] && return 0
        usleep 300000
    done
    t "timeout waiting for $1=$2 (is: $(xenstore-read "$1" 2>&1))"
    return 1
}
# wait_log FILE PATTERN SECONDS
wait_log() {
    end=$(($(now_s) + $3))
    while [ "$(now_s)" -lt $end ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        usleep 300000
    done
    t "timeout waiting for '$2' in $1"
    return 1
}
# Guest consoles (xenconsoled logs) stream to this console as they are written.
follow_console() {
    touch "/var/log/xen/console/guest-$1.log"
    tail -F "/var/log/xen/console/guest-$1.log" 2>/dev/null &
}
# start_backend N: the backend's Nth instance, its log in /var/log/pvfs-backend-N.log
start_backend() {
    SWIFT_BACKTRACE=enable=yes,interactive=no,color=no,threads=all,swift-backtrace=/bin/swift-backtrace \
        pvfs-xen-test-backend --file hello.txt=hello-from-pvfs --refuse-tag refused --log-level info \
        >"/var/log/pvfs-backend-$1.log" 2>&1 &
    BPID=$!
    tail -F "/var/log/pvfs-backend-$1.log" 2>/dev/null | sed "s/^/[backend-$1] /" &
    wait_log "/var/log/pvfs-backend-$1.log" "backend running" 60
}
# Run in a subshell by marker_check, whose output it would otherwise swallow.
backend_alive() { kill -0 "$BPID"; }

t "starting the test backend"
# Not through marker_check: the backend must be this shell's child (BPID, kill -9 later).
if start_backend 1; then marker backend-started ok "pid $BPID"; else marker backend-started fail "see the backend's log"; fi
T0=$(up)

# The backend and this script must not starve behind three booting guests under emulation.
xl sched-credit -d 0 -w 1024
for d in main churn hostile; do
    follow_console $d
    xl create -p "/guest/$d.cfg" >"/var/log/xen/xl-create-$d.log" 2>&1 ||
        { t "xl create $d failed"; tail -20 "/var/log/xen/xl-create-$d.log"; }
done
M=$(xl domid main) C=$(xl domid churn) H=$(xl domid hostile)
t "domains: main=$M churn=$C hostile=$H"
marker_check attach-main $PV attach vm-main --domid "$M"
marker_check attach-churn $PV attach vm-churn --domid "$C" --json
n=0
for s in nr0 nr100 nrabc refabc refbad order20 order0 evbad ver2 refused malformed jump huge; do
    $PV attach vm-hostile --domid "$H" --devid $n --tag $s >/dev/null || marker "attach-hostile-$s" fail "pvfs-vm attach failed"
    n=$((n + 1))
done
marker_check attach-twice-refused sh -c "! $PV attach vm-main --domid $M --devid 0"
marker_check attach-unknown-domain sh -c "! $PV attach vm-x --domid 4242"
marker_check backend-initwait wait_xs "$BE/$M/0/state" 2 30
xenstore-ls -fp "$BE/$M" 2>&1
xenstore-ls -fp "/local/domain/$M/device/9pfs" 2>&1
$PV xl-config vm-main --kernel /guest/vmlinux --initrd /guest/transport-initrd.img --memory 128 >/tmp/vm-main.cfg
marker_check xl-config grep -q 'rootflags=trans=xen,version=9p2000.L' /tmp/vm-main.cfg
cat /tmp/vm-main.cfg

# Started one after the other: three kernels booting at once crawl under nested emulation.
xl unpause main
t "main unpaused"
marker_check main-mounted wait_xs "/local/domain/$M/data/phase" mounted 300
xl unpause churn
t "churn unpaused"
marker_check churn-busy wait_xs "/local/domain/$C/data/phase" busy 300
marker_check two-domains-connected sh -c "[ \$(xenstore-read $BE/$M/0/state) = 4 ] && [ \$(xenstore-read $BE/$C/0/state) = 4 ]"
t "two domUs mounted after $(awk -v a="$(up)" -v b="$T0" 'BEGIN{print a-b}')s"
xl unpause hostile
t "hostile unpaused"
marker_check hostile-done wait_xs "/local/domain/$H/data/phase" done 400
marker_check hostile-scenarios wait_xs "/local/domain/$H/data/hostile" pass 5
marker_check backend-survived-hostile backend_alive
for n in 0 1 2 3 4 5 6 7 8 9 10 11 12; do
    t "hostile device $n: tag=$(xenstore-read "$BE/$H/$n/tag") state=$(xenstore-read "$BE/$H/$n/state") error=$(xenstore-read "$BE/$H/$n/error" 2>/dev/null)"
done

t "destroying churn mid-session"
TD=$(up)
xl destroy churn
end=$(($(now_s) + 60))
while [ "$(now_s)" -lt $end ]; do
    xl list | grep -qE "churn|\(null\)" || break
    usleep 300000
done
xl list
marker_check churn-gone-no-zombie sh -c "! xl list | grep -qE 'churn|\(null\)'"
t "churn fully destroyed after $(awk -v a="$(up)" -v b="$TD" 'BEGIN{print a-b}')s"
marker_check churn-teardown-logged wait_log /var/log/pvfs-backend-1.log "device $C/0: rings unmapped" 10
marker_check churn-nodes-removed sh -c "! xenstore-read $BE/$C/0/state"

xenstore-write "/local/domain/$M/data/cmd" recheck
marker_check main-still-serving wait_xs "/local/domain/$M/data/phase" rechecked 120
marker_check backend-still-alive backend_alive

t "killing the backend (SIGKILL) while main has the share mounted"
kill -9 "$BPID"
wait "$BPID" 2>/dev/null
if start_backend 2; then marker backend-restarted ok "pid $BPID"; else marker backend-restarted fail "see the backend's log"; fi
marker_check lost-session-adopted wait_log /var/log/pvfs-backend-2.log "device $M/0: adopted a connected frontend" 30
xenstore-read "$BE/$M/0/error"
marker_check lost-session-error-node sh -c "xenstore-read $BE/$M/0/error | grep -q 'session lost'"
xenstore-write "/local/domain/$M/data/cmd" stale
marker_check main-unmounted wait_xs "/local/domain/$M/data/phase" unmounted 240

t "detaching main's device"
$PV detach vm-main --domid "$M" >/tmp/detach.out 2>&1
cat /tmp/detach.out
marker_check detach-closed-by-backend grep -q '^detached vm-main device 0' /tmp/detach.out
marker_check detach-nodes-removed sh -c "! xenstore-read $BE/$M/0/state && ! xenstore-read /local/domain/$M/device/9pfs/0/state"
marker_check detach-logged wait_log /var/log/pvfs-backend-2.log "device $M/0: removed" 10

t "stopping the backend (SIGTERM)"
kill -TERM "$BPID"
end=$(($(now_s) + 30))
while kill -0 "$BPID" 2>/dev/null && [ "$(now_s)" -lt $end ]; do usleep 100000; done
marker_check backend-stopped-cleanly sh -c "! kill -0 $BPID 2>/dev/null && grep -q 'xen 9pfs backend stopped' /var/log/pvfs-backend-2.log"

xenstore-write "/local/domain/$M/data/cmd" poweroff
sleep 3
# Any crashed dom0 process (the backend, the toolstack, this script's helpers) fails the run.
crashes=$(dmesg | grep -E 'segfault at|traps: |general protection fault')
if [ -z "$crashes" ]; then
    marker xen-dom0-no-crash ok "no process crashed in dom0"
else
    marker xen-dom0-no-crash fail "$(echo "$crashes" | head -3 | tr '\n' ' ')"
fi
xl destroy hostile 2>/dev/null
xl list
marker_done "transport check"
