#!/bin/bash
# End-to-end test of pvfs's Xen PV 9pfs backend in a real Xen 4.17, nested under QEMU (TCG).
#
#   Tests/guest/xen/pvfs-backend-e2e.sh            # build, boot, check; exit 0 on PASS
#
# What it does:
#  1. Builds `pvfs-vm` (release, --static-swift-stdlib) from a copy of the package whose
#     Sources/pvfs-vm/main.swift is e2e-main.swift here (the Xen commands plus the hidden
#     `xen-serve-test` diagnostic backend with its built-in read-only 9P responder), and
#     hostile-frontend.c with gcc.
#  2. Builds a dom0 initramfs (Xen toolstack, the binary, two domU initramfs images) and
#     boots Xen + dom0 under qemu-system-x86_64 -accel tcg.
#  3. dom0-init.sh: starts the backend, `xl create -p` three PV domUs, attaches their 9pfs
#     devices with `pvfs-vm attach`, unpauses them, and checks: two domUs mount
#     (`mount -t 9p -o trans=xen,version=9p2000.L pvfs-root /mnt`), list, stat, read; a
#     hostile domU writes garbage into xenstore and into the rings (13 scenarios) and every
#     device fails cleanly while the backend keeps serving; a domU destroyed mid-session is
#     torn down without leaving a dying domain; the backend killed with SIGKILL and
#     restarted answers the surviving mount with EIO; `pvfs-vm detach` closes and removes
#     the device; SIGTERM stops the backend cleanly.
#
# Needs (Debian 12): xen-hypervisor-4.17-amd64 xen-utils-4.17 xenstore-utils libxen-dev
# qemu-system-x86 linux-image-amd64 busybox-static cpio gcc, python3 with lzma, Swift 6.
# Environment: WORK (build dir, default .build-xen-e2e in the package), TIMEOUT (s, 900),
# K (kernel version), QEMU_CPU (default max,-xsave: with XSAVE exposed nested Xen crashed
# dom0 userspace at random), KEEP_GOING=1 to skip the Swift rebuild when a binary exists.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
WORK=${WORK:-$ROOT/.build-xen-e2e}
OUT=$WORK/out
LOGS=$WORK/logs
K=${K:-$(ls /boot/vmlinuz-*-amd64 | sort -V | tail -1 | sed s,/boot/vmlinuz-,,)}
XENBIN=/usr/lib/xen-4.17/bin
mkdir -p "$OUT" "$LOGS"
T0=$(date +%s.%N)
say() { echo "e2e: $*"; }

for f in /boot/xen-4.17-amd64.gz /boot/vmlinuz-$K /bin/busybox $XENBIN/xl /usr/bin/qemu-system-x86_64; do
  [ -e "$f" ] || { say "missing $f (see the package list at the top)"; exit 2; }
done

########## 1. binaries ##########
PKG=$WORK/pkg
BIN=$PKG/.build/release/pvfs-vm
if [ "${KEEP_GOING:-0}" != 1 ] || [ ! -x "$BIN" ]; then
  mkdir -p "$PKG"
  rm -rf "$PKG/Sources" "$PKG/Tests" "$PKG/bench"
  cp -a "$ROOT/Sources" "$ROOT/Tests" "$ROOT/bench" "$ROOT/Package.swift" "$PKG/"
  rm -rf "$PKG/Tests/guest"
  cp -p "$HERE/e2e-main.swift" "$PKG/Sources/pvfs-vm/main.swift"
  say "building pvfs-vm (release, static Swift stdlib)"
  (cd "$PKG" && swift build -c release --static-swift-stdlib --product pvfs-vm) > "$LOGS/swift-build.log" 2>&1 \
    || { tail -30 "$LOGS/swift-build.log"; say "swift build failed"; exit 2; }
fi
gcc -O2 -Wall -o "$OUT/hostile-frontend" "$HERE/hostile-frontend.c" -lxenstore -lxengnttab -lxenevtchn || exit 2
T1=$(date +%s.%N)

########## 2. images ##########
zcat /boot/xen-4.17-amd64.gz > "$OUT/xen"   # QEMU's multiboot loader wants the plain ELF
if [ ! -f "$OUT/vmlinux-$K" ]; then
  # The uncompressed kernel ELF boots much faster under emulation (no decompression).
  python3 - "/boot/vmlinuz-$K" "$OUT/vmlinux-$K" <<'PY' || exit 2
import sys, lzma, gzip, struct, subprocess
src, dst = sys.argv[1], sys.argv[2]
image = open(src, 'rb').read()
setup_sects = image[0x1f1] or 4
offset, _ = struct.unpack_from('<II', image, 0x248)
payload = image[(setup_sects + 1) * 512 + offset:]
if payload[:6] == b'\xfd7zXZ\x00':
    data = lzma.LZMADecompressor().decompress(payload)
elif payload[:2] == b'\x1f\x8b':
    data = gzip.decompress(payload)
elif payload[:4] == b'\x28\xb5\x2f\xfd':
    data = subprocess.run(['zstd', '-dc'], input=payload, capture_output=True, check=True).stdout
else:
    sys.exit('unknown kernel payload')
assert data[:4] == b'\x7fELF'
open(dst, 'wb').write(data)
PY
fi

add_bin() {  # add_bin ROOT FILE: the file and the shared libraries ldd names
  local root=$1 src=$2
  mkdir -p "$root$(dirname "$src")"
  cp -aL "$src" "$root$src"
  ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -aLn "$lib" "$root$lib"
  done
}
add_busybox() {
  local root=$1
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,mnt,lib,lib64,var}
  cp /bin/busybox "$root/bin/busybox"
  for app in $(/bin/busybox --list-full); do
    [ -e "$root/$app" ] || ln -s /bin/busybox "$root/$app"
  done
}
add_mods() {  # add_mods ROOT MODULE... (in load order)
  local root=$1; shift
  mkdir -p "$root/modules"
  : > "$root/modules/order"
  for m in "$@"; do
    cp "$(modinfo -k "$K" -n "$m")" "$root/modules/"
    basename "$(modinfo -k "$K" -n "$m")" >> "$root/modules/order"
  done
}
add_xenstore_tools() {
  local root=$1
  add_bin "$root" /usr/bin/xenstore
  for l in /usr/bin/xenstore-read /usr/bin/xenstore-write /usr/bin/xenstore-list /usr/bin/xenstore-rm \
           /usr/bin/xenstore-exists /usr/bin/xenstore-chmod /usr/bin/xenstore-ls /usr/bin/xenstore-watch; do
    rm -f "$root$l"; cp -a "$l" "$root$l"
  done
}
mkcpio() { (cd "$1" && find . -print0 | cpio --null -o -H newc --quiet) | gzip -1 > "$2"; }

U=$WORK/guest-root
rm -rf "$U"; add_busybox "$U"
add_mods "$U" netfs fscache 9pnet 9pnet_xen 9p
add_xenstore_tools "$U"
cp "$HERE/domU-init.sh" "$U/init"; chmod +x "$U/init"
mkcpio "$U" "$OUT/guest-initrd.gz"

Hs=$WORK/hostile-root
rm -rf "$Hs"; add_busybox "$Hs"
add_mods "$Hs" xen-evtchn xen-gntalloc
add_xenstore_tools "$Hs"
add_bin "$Hs" "$OUT/hostile-frontend"
mv "$Hs$OUT/hostile-frontend" "$Hs/bin/hostile-frontend"
cp "$HERE/domU-init.sh" "$Hs/init"; chmod +x "$Hs/init"
mkcpio "$Hs" "$OUT/hostile-initrd.gz"

D=$WORK/dom0-root
rm -rf "$D"; add_busybox "$D"
add_mods "$D" xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc
for b in xl xenstored xenconsoled xen-init-dom0; do add_bin "$D" $XENBIN/$b; done
add_xenstore_tools "$D"
cp /opt/swift/usr/libexec/swift/linux/swift-backtrace-static "$D/bin/swift-backtrace" 2>/dev/null || true
add_bin "$D" "$BIN"
strip -o "$D/bin/pvfs-vm" "$BIN" && rm -f "$D$BIN"
for l in /lib/x86_64-linux-gnu/libgcc_s.so.1; do mkdir -p "$D$(dirname $l)"; cp -aLn "$l" "$D$l"; done
mkdir -p "$D/etc/xen" "$D/var/lib/xen" "$D/var/lib/xenstored" "$D/var/log/xen" "$D/var/run/xen" "$D/var/run/xenstored"
cp /etc/xen/xl.conf "$D/etc/xen/"
cp -a /etc/xen/scripts "$D/etc/xen/"
echo 'root:x:0:0:root:/root:/bin/sh' > "$D/etc/passwd"
echo 'root:x:0:' > "$D/etc/group"
if [ "${QEMU_CONTROL:-0}" = 1 ]; then   # QEMU's 9pfs backend, for control experiments
  add_bin "$D" /usr/libexec/xen-qemu-system-i386
  mkdir -p "$D/usr/share/qemu"; cp -aL /usr/share/qemu/keymaps "$D/usr/share/qemu/" 2>/dev/null || true
fi
[ -x "$WORK/out/mmstress" ] && add_bin "$D" "$WORK/out/mmstress" && mv "$D$WORK/out/mmstress" "$D/bin/mmstress"
mkdir -p "$D/guest"
cp "$OUT/vmlinux-$K" "$D/guest/vmlinuz"
cp "$OUT/guest-initrd.gz" "$OUT/hostile-initrd.gz" "$HERE"/{main,churn,hostile}.cfg "$D/guest/"
cp "$HERE/dom0-init.sh" "$D/init"; chmod +x "$D/init"
(cd "$D" && find . -print0 | cpio --null -o -H newc --quiet) > "$OUT/dom0-initrd.cpio"
T2=$(date +%s.%N)
say "images: dom0 $(du -m "$OUT/dom0-initrd.cpio" | cut -f1) MiB, pvfs-vm $(du -m "$BIN" | cut -f1) MiB"

########## 3. boot ##########
LOG=$LOGS/run-$(date +%Y%m%d-%H%M%S).log
XENARGS="console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=768M,max:768M dom0_max_vcpus=${DOM0_VCPUS:-2} smap=0 smep=0 bootscrub=0"
say "booting nested Xen (log: $LOG)"
timeout -k 5 "${TIMEOUT:-900}" qemu-system-x86_64 -accel tcg -cpu "${QEMU_CPU:-max,-xsave}" -m 2048 -smp 2 -nographic -no-reboot \
  -monitor none -serial stdio -kernel "$OUT/xen" -append "$XENARGS" \
  -initrd "$OUT/vmlinux-$K console=hvc0 earlyprintk=xen rdinit=/init ${DOM0_EXTRA:-},$OUT/dom0-initrd.cpio" \
  < /dev/null 2>&1 | perl -MTime::HiRes=time -ne 'BEGIN{$|=1; $s=time} printf "[%7.2f] %s", time-$s, $_' > "$LOG"
T3=$(date +%s.%N)

grep -aE 'E2E|HOSTILE|DOMU-|MARK' "$LOG" | grep -avE '^\[[ 0-9.]+\] \[' || true
printf 'e2e: build %.0fs, images %.0fs, boot+test %.0fs, total %.0fs\n' \
  "$(echo "$T1 - $T0" | bc)" "$(echo "$T2 - $T1" | bc)" "$(echo "$T3 - $T2" | bc)" "$(echo "$T3 - $T0" | bc)"
grep -aq 'E2E: RESULT PASS' "$LOG" && ! grep -aq 'E2E: FAIL' "$LOG"
