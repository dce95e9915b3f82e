#!/bin/bash
# Builds the initramfs of the Linux guest that mounts pvfs over 9P (TCP) and runs init.sh:
# busybox, the virtio-net and 9p modules of the host's Debian kernel, setfattr/getfattr.
#
#   scripts/guest-9p/build-initramfs.sh OUT_DIR      -> OUT_DIR/initrd.gz, OUT_DIR/kernel
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1
K=${K:-$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -1 | sed s,/boot/vmlinuz-,,)}
root=$out/root
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,mnt,lib,lib64,var,modules}

cp /bin/busybox "$root/bin/busybox"
for app in $(/bin/busybox --list-full); do
  [ -e "$root/$app" ] || ln -s /bin/busybox "$root/$app"
done

add_bin() {  # a binary and the libraries ldd names, at their paths
  local src=$1
  mkdir -p "$root$(dirname "$src")"
  cp -aL "$src" "$root$src"
  ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -aLn "$lib" "$root$lib" 2>/dev/null || true
  done
}
for b in /usr/bin/setfattr /usr/bin/getfattr /usr/bin/flock; do [ -x "$b" ] && add_bin "$b"; done

: > "$root/modules/order"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net \
         netfs fscache 9pnet 9pnet_fd 9p; do
  f=$(modinfo -k "$K" -n "$m")
  cp "$f" "$root/modules/"
  basename "$f" >> "$root/modules/order"
done

printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' > "$root/etc/group"
cp "$here/init.sh" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$out/initrd.gz"
cp "/boot/vmlinuz-$K" "$out/kernel"
rm -rf "$root"
