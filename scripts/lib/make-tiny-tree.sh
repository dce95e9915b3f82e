#!/bin/bash
# scripts/lib/make-tiny-tree.sh DIR: a small root tree (busybox, a few users, one of each kind of
# file) for templates in tests and benchmarks that need a tree quickly and without network.
set -euo pipefail
root=${1:?usage: make-tiny-tree.sh DIR}
mkdir -p "$root"/{bin,sbin,etc,dev,proc,sys,tmp,root,home/user,var/lib,usr/bin,usr/sbin}
cp /bin/busybox "$root/bin/busybox"
for app in sh ls cat echo mkdir rm mv cp ln chmod chown stat df sync mount umount poweroff; do
    ln -sf busybox "$root/bin/$app"
done
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nusers:x:100:user\nuser:x:1000:\nnogroup:x:65534:\n' > "$root/etc/group"
echo tiny > "$root/etc/hostname"
printf 'shared configuration\n' > "$root/etc/config"
ln -f "$root/etc/config" "$root/etc/config.hardlink"
chmod 1777 "$root/tmp"
chown 1000:1000 "$root/home/user"
[ -e "$root/dev/null" ] || mknod -m 666 "$root/dev/null" c 1 3
[ -e "$root/dev/fifo" ] || mkfifo "$root/dev/fifo"
setfattr -n user.origin -v template "$root/etc/config" 2>/dev/null || true
