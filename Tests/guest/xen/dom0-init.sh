#!/bin/sh
# Tests/guest/xen/dom0-init.sh: /init of the Xen dom0 of run-xen-9pfs.sh (busybox sh).
#
# Brings up the Xen toolstack (xenstored, xen-init-dom0, xenconsoled), then runs one PV domU
# whose test initramfs (Tests/guest/guest-init.sh + fileops.sh) mounts a Xen 9pfs share with
#   mount -t 9p -o trans=xen,version=9p2000.L TAG /mnt
# and runs the file-operation checks. The domU's console (written by xenconsoled) is copied to
# dom0's console as it arrives, so the host reads every result line (Tests/guest/lib/results.sh,
# /lib/pvfs/results.sh here) from one serial log.
# With XEN_SCENARIO=transport (run-xen-9pfs.sh --transport-check) it runs transport-check.sh
# instead, once the toolstack is up: the Xen transport alone, three domUs, hostile frontends.
#
# The 9pfs backend is pluggable: /etc/pvfs-xen/backend.sh (from xen/backends/) is sourced and
# may define these hooks (all optional):
#   backend_prepare SHARE TAG         before the domU exists: start daemons
#   backend_xl_config SHARE TAG       print extra xl.cfg lines (e.g. a p9 = [...] line)
#   backend_attach DOMID SHARE TAG    domU created paused: connect its 9pfs device
#   backend_teardown DOMID            after the domU is gone: stop daemons, remove xenstore nodes
#   backend_host_view SHARE           print a dom0 path that shows the served tree (for the
#                                     manifest check), or nothing
#   backend_restart DOMID             XEN_RESTART=1, once the domU's console shows
#                                     PVFS-RESTART-REQUEST: kill the backend (SIGKILL) and start it
#                                     again while the device is mounted
# Helpers hooks can use: xs_attach_9pfs DOMID TAG PATH [DEVID], xs_detach_9pfs DOMID [DEVID],
# t MSG (timestamped log line), marker NAME ok|fail DETAIL (lib/results.sh).
# Settings: /etc/pvfs-xen.conf (written per run by run-xen-9pfs.sh). Besides the file checks,
# the domU can instead boot its root from the share (XEN_DOMU_RAMDISK/XEN_DOMU_CMDLINE from
# `pvfs-vm boot-files --transport xen`, XEN_SHARE_SEED = the root tree, XEN_MARKER_NONCE = what
# the booted tree must write to /var/lib/pvfs-boot-marker).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/lib/xen-4.17/bin:/usr/local/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
exec </dev/console >/dev/console 2>&1

t() { echo "PVFS-XEN[$(cut -d' ' -f1 /proc/uptime)] $*"; }
. /lib/pvfs/results.sh
up() { cut -d' ' -f1 /proc/uptime; }
finish() {
    t "dom0 done"
    sync
    reboot -f
}

XEN_TAG=share XEN_SHARE=/srv/share XEN_QUOTA_FS="" XEN_DOMU_EXTRA="" XEN_DOMU_MEM=256 XEN_DOMU_WAIT=600
XEN_DOMU_RAMDISK=/guest/initrd.img XEN_DOMU_CMDLINE="" XEN_SHARE_SEED="" XEN_MARKER_NONCE="" XEN_SCENARIO=files
[ -f /etc/pvfs-xen.conf ] && . /etc/pvfs-xen.conf
[ -n "$XEN_DOMU_CMDLINE" ] ||
    XEN_DOMU_CMDLINE="console=hvc0 rdinit=/init quiet loglevel=3 panic=-1 pvfs.trans=xen pvfs.tag=$XEN_TAG $XEN_DOMU_EXTRA"
grep -q 'pvfsxen=shell' /proc/cmdline && XEN_SHELL=1

# xs_attach_9pfs DOMID TAG PATH [DEVID]: create a PV 9pfs device by writing xenstore the way
# libxl does for p9=[...] (backend under dom0, frontend under the guest, libxl's permissions).
xs_attach_9pfs() {
    d=$1 tag=$2 path=$3 dev=${4:-0}
    be=/local/domain/0/backend/9pfs/$d/$dev
    fe=/local/domain/$d/device/9pfs/$dev
    xenstore-write "$be/frontend" "$fe" "$be/frontend-id" "$d" "$be/online" 1 "$be/state" 1 \
        "$be/path" "$path" "$be/security_model" none &&
        xenstore-chmod -r "$be" n0 "r$d" &&
        xenstore-write "$fe/backend" "$be" "$fe/backend-id" 0 "$fe/state" 1 "$fe/tag" "$tag" &&
        xenstore-chmod -r "$fe" "n$d" r0
}
xs_detach_9pfs() {
    xenstore-rm "/local/domain/0/backend/9pfs/$1/${2:-0}" 2>/dev/null
    xenstore-rm "/local/domain/$1/device/9pfs/${2:-0}" 2>/dev/null
    true
}

# Default hooks; the backend file overrides what it needs.
backend_prepare() { :; }
backend_xl_config() { :; }
backend_attach() { :; }
backend_teardown() { :; }
backend_host_view() { echo "$1"; }
backend_restart() { t "this backend cannot be restarted"; return 1; }

t "dom0 init; kernel $(uname -r); cmdline: $(cat /proc/cmdline)"
for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" 2>/tmp/insmod.err || t "insmod $m: $(cat /tmp/insmod.err)"
done
mkdir -p /proc/xen /var/run/xen /var/run/xenstored /var/lib/xenstored /var/lib/xen /var/log/xen/console
mount -t xenfs xenfs /proc/xen || { marker xen-dom0 fail "cannot mount xenfs"; finish; }
xenstored --pid-file /var/run/xen/xenstored.pid
i=0
while [ ! -s /var/run/xen/xenstored.pid ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i + 1)); done
if ! xen-init-dom0 >/tmp/init-dom0.log 2>&1; then
    marker xen-dom0 fail "xen-init-dom0: $(tail -1 /tmp/init-dom0.log)"
    finish
fi
xenconsoled --pid-file=/var/run/xen/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
ver=$(xl info 2>/dev/null | sed -n 's/^xen_version *: *//p')
if [ -n "$ver" ]; then marker xen-dom0 ok "Xen $ver toolstack up at $(up)s"; else marker xen-dom0 fail "xl info failed"; finish; fi
[ "${XEN_SHELL:-0}" = 1 ] && { t "shell requested"; setsid cttyhack sh; }
if [ "$XEN_SCENARIO" = transport ]; then
    . /etc/pvfs-xen/transport-check.sh
    finish
fi

# The share: a tmpfs of the quota's size (df and ENOSPC checks), else an ext2 image on a loop
# device, because dom0's rootfs (tmpfs in 6.1) keeps no user.* xattrs.
mkdir -p "$XEN_SHARE"
if [ -n "$XEN_QUOTA_FS" ]; then
    mount -t tmpfs -o "size=$XEN_QUOTA_FS,mode=755" share "$XEN_SHARE" || marker xen-share fail "tmpfs of $XEN_QUOTA_FS"
elif truncate -s 512M /tmp/share.img && mke2fs -q -F /tmp/share.img >/tmp/mke2fs.log 2>&1 &&
    mount -t ext2 -o loop,user_xattr /tmp/share.img "$XEN_SHARE" 2>>/tmp/mke2fs.log; then
    t "share: ext2 image on $(grep " $XEN_SHARE " /proc/mounts | cut -d' ' -f1)"
else
    t "share: no loop ext2 ($(tail -2 /tmp/mke2fs.log | tr '\n' ' ')); using dom0's rootfs"
fi
chmod 755 "$XEN_SHARE"
if [ -n "$XEN_SHARE_SEED" ]; then
    cp -a "$XEN_SHARE_SEED/." "$XEN_SHARE/" && t "share seeded from $XEN_SHARE_SEED ($(du -sk "$XEN_SHARE" | cut -f1) KiB)"
fi

. /etc/pvfs-xen/backend.sh
t "backend: ${XEN_BACKEND:-?}"
if ! backend_prepare "$XEN_SHARE" "$XEN_TAG"; then
    marker xen-backend-prepare fail "see the lines above"
    finish
fi

cat >/tmp/domU.cfg <<EOF
name = "domU"
type = "pv"
kernel = "/guest/vmlinux"
ramdisk = "$XEN_DOMU_RAMDISK"
extra = "$XEN_DOMU_CMDLINE"
memory = $XEN_DOMU_MEM
vcpus = 1
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
$(backend_xl_config "$XEN_SHARE" "$XEN_TAG")
EOF
t0=$(up)
if ! xl create -p /tmp/domU.cfg >/var/log/xen/xl-create.log 2>&1; then
    marker xen-domU-create fail "$(tail -3 /var/log/xen/xl-create.log | tr '\n' ' ')"
    cat /tmp/domU.cfg /var/log/xen/xl-create.log /var/log/xen/qemu-dm-domU.log 2>/dev/null | tail -40
    finish
fi
domid=$(xl domid domU)
marker xen-domU-create ok "domid $domid (paused) in $(echo "$(up) - $t0" | bc)s"

: >/var/log/xen/console/guest-domU.log
tail -f /var/log/xen/console/guest-domU.log &
tailpid=$!

if backend_attach "$domid" "$XEN_SHARE" "$XEN_TAG"; then
    marker xen-backend-attach ok "domid $domid tag $XEN_TAG"
else
    marker xen-backend-attach fail "domid $domid"
fi
if [ -n "${XEN_DEBUG:-}" ]; then
    # Debugging (--env XEN_DEBUG=SECONDS): the backend's threads and the 9pfs device state.
    (
        while sleep "$XEN_DEBUG"; do
            for p in $(pidof xen-qemu-system-i386 pvfsd); do
                t "watch: $(cat /proc/$p/comm) $p $(cut -d' ' -f3,14,15 /proc/$p/stat) threads: $(for k in /proc/$p/task/*; do echo "$(cat $k/comm)/$(cut -d' ' -f3 $k/stat)/$(cat $k/wchan)"; done | tr '\n' ' ')"
            done
            t "watch: 9pfs fe state $(xenstore-read /local/domain/$domid/device/9pfs/0/state 2>&1) be state $(xenstore-read /local/domain/0/backend/9pfs/$domid/0/state 2>&1) error '$(xenstore-read /local/domain/0/backend/9pfs/$domid/0/error 2>/dev/null)'; evtchn irqs: $(grep -c xen-dyn /proc/interrupts)"
            for f in /var/log/xen/pvfsd.log /var/log/xen/backend.log; do
                [ -s "$f" ] && t "watch: $f: $(tail -3 "$f" | tr '\n' ' ')"
            done
        done
    ) &
fi
xl unpause domU
t1=$(up)
# Poll xenstore, not xl: xl is heavy under emulation and has been seen to crash when run
# every second, which would end the wait early.
i=0 restarted=0
while :; do
    xenstore-exists "/local/domain/$domid" 2>/dev/null
    [ $? -eq 1 ] && break # gone (a crashed tool, status >= 128, is not an answer)
    if [ "${XEN_RESTART:-0}" = 1 ] && [ $restarted = 0 ] && grep -q PVFS-RESTART-REQUEST /var/log/xen/console/guest-domU.log; then
        restarted=1
        t0=$(up)
        if backend_restart "$domid"; then
            marker xen-backend-restart ok "killed (SIGKILL) and restarted in $(echo "$(up) - $t0" | bc)s"
        else
            marker xen-backend-restart fail "see the lines above"
        fi
    fi
    sleep 2
    i=$((i + 2))
    if [ $i -ge "$XEN_DOMU_WAIT" ]; then
        marker xen-domU-run fail "still running after ${XEN_DOMU_WAIT}s; destroying it"
        xl destroy domU
        break
    fi
done
[ $i -lt "$XEN_DOMU_WAIT" ] && marker xen-domU-run ok "domU ran $(echo "$(up) - $t1" | bc)s"
sleep 1
kill $tailpid 2>/dev/null
backend_teardown "$domid"

if grep -q 'PVFS-TEST-DONE' /var/log/xen/console/guest-domU.log; then :; else
    t "domU did not finish; its console, xl and device-model logs follow"
    tail -30 /var/log/xen/xl-create.log
    tail -30 /var/log/xen/qemu-dm-domU.log 2>/dev/null
    ls -la /var/log/xen
fi

# With XSAVE exposed to nested Xen under TCG, dom0 processes crashed at random (segfaults in
# xl, xenstore tools, busybox); the kernel logs such crashes whatever the console level.
crashes=$(dmesg | grep -E 'segfault at|traps: |general protection fault' | grep -v 'hostile-frontend')
if [ -z "$crashes" ]; then
    marker xen-dom0-no-crash ok "no process crashed in dom0"
else
    marker xen-dom0-no-crash fail "$(echo "$crashes" | head -3 | tr '\n' ' ')"
fi

view=$(backend_host_view "$XEN_SHARE")
if [ -n "$XEN_MARKER_NONCE" ]; then
    got=$(cat "$view/var/lib/pvfs-boot-marker" 2>&1)
    case $got in
    "$XEN_MARKER_NONCE "*) marker xen-dom0-marker ok "the booted root wrote: $got" ;;
    *) marker xen-dom0-marker fail "marker: '$got', want nonce $XEN_MARKER_NONCE" ;;
    esac
fi
if [ -n "$XEN_MARKER_NONCE" ]; then
    : # a root boot, not the file checks: no manifest
elif [ "${XEN_RESTART:-0}" = 1 ]; then
    case $(cat "$view/restart-probe" 2>&1) in
    "pvfs restart probe "*) marker xen-dom0-restart-probe ok "written before the SIGKILL, read through the store: $(cat "$view/restart-probe")" ;;
    *) marker xen-dom0-restart-probe fail "restart-probe: '$(cat "$view/restart-probe" 2>&1)'" ;;
    esac
elif case " $XEN_DOMU_EXTRA " in *" pvfs.run=bench "* | *" pvfs.run=shell "* | *" pvfs.run=posix "*) true ;; *) false ;; esac then
    : # the benchmark workload, a shell or the POSIX suite: no manifest either
elif [ -n "$view" ] && [ -f "$view/pvfs-fileops/MANIFEST" ] && [ ! -s "$view/pvfs-fileops/MANIFEST" ]; then
    t "manifest empty (the checks that write it were skipped)"
elif [ -n "$view" ]; then
    if [ -f "$view/pvfs-fileops/MANIFEST" ] && (cd "$view/pvfs-fileops" && sha256sum -c -s MANIFEST); then
        marker xen-dom0-manifest ok "dom0 reads what the domU wrote ($(wc -l <"$view/pvfs-fileops/MANIFEST") files)"
    else
        marker xen-dom0-manifest fail "MANIFEST missing or mismatched under $view/pvfs-fileops"
    fi
fi
finish
