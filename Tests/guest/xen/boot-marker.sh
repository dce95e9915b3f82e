#!/bin/sh
# PID 1 of a domU whose root is a Xen 9pfs share (run-xen-9pfs.sh --boot-root installs it as
# /sbin/pvfs-boot-marker in the share; with pvfsd the VM's tree must already hold it).
# Needs busybox's sh, awk, sed, cut, tail, uname, sync and poweroff.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
up() { cut -d' ' -f1 /proc/uptime; }
echo "PVFS-TEST root-init ok pid $$ at $(up)s from the 9P root"
root=$(awk '$2 == "/" { print $3 " " $1 " " $4 }' /proc/mounts | tail -1)
case $root in 9p*trans=xen*) echo "PVFS-TEST root-is-9p ok $root" ;; *) echo "PVFS-TEST root-is-9p fail $root" ;; esac
nonce=$(sed -n 's/.*pvfs\.nonce=\([^ ]*\).*/\1/p' /proc/cmdline)
if echo "$nonce $(uname -r) $(up)" >/var/lib/pvfs-boot-marker && sync; then
    echo "PVFS-TEST marker-written ok nonce $nonce"
else
    echo "PVFS-TEST marker-written fail"
fi
echo "PVFS-TEST-DONE uptime=$(up)"
poweroff -f
