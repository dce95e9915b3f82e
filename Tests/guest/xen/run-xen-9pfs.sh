#!/bin/bash
# Tests/guest/xen/run-xen-9pfs.sh: the guest checks in Xen PV domUs over Xen 9pfs (the one Xen driver).
#
# Boots Xen 4.17 nested under QEMU TCG with Debian's kernel as PV dom0 (xen/dom0-init.sh as its
# /init). dom0 starts the toolstack, runs a 9pfs backend through a hook file (xen/backends/),
# and boots a PV domU with the standard test initramfs (guest-init.sh + fileops.sh), which mounts
#   mount -t 9p -o trans=xen,version=9p2000.L TAG /mnt
# and runs the checks. The domU's console is copied to dom0's, so all result lines
# (Tests/guest/lib/results.sh) land in one serial log.
#
# usage: run-xen-9pfs.sh [OPTIONS]
#   --backend qemu-xl       QEMU as backend, started by libxl from a p9= line (default)
#   --backend qemu-manual   xl create -p, xenstore nodes written by hand, QEMU started as a
#                           separate backend process, xl unpause: the steps pvfsd will take
#   --backend pvfsd         pvfsd + pvfs-vm in dom0 (see xen/backends/pvfsd.sh for the contract);
#                           needs --store S --vm NAME, and the binaries via --pvfsd/--pvfs-vm or
#                           --build-pvfs (release builds, Swift runtime linked in: xen/release-builds.sh)
#   --backend-cmd CMD       any backend process: the domU is created paused, its 9pfs device is
#                           attached (xenstore nodes as libxl writes them, or --attach-cmd CMD),
#                           CMD starts in the background, the domU is unpaused. {domid}, {tag}
#                           and {path} are substituted. Ship its binaries with --dom0-file.
#   --backend FILE          any hook file (see the hook list in xen/dom0-init.sh)
#   --transport-check       instead of one domU: the Xen transport on its own (xen/transport-check.sh).
#                           pvfs-xen-test-backend (PVFSTransport's Xen backend with a read-only
#                           diagnostic 9P server) serves three domUs (xen/domU-init.sh): one
#                           mounts and reads, one is destroyed mid-session, one runs
#                           hostile-frontend.c (13 misbehaving-frontend scenarios); then SIGKILL
#                           and restart under a mounted domU (EIO), pvfs-vm detach, SIGTERM.
#                           Binaries: --test-backend BIN --pvfs-vm BIN, or --build-pvfs.
#                           Needs gcc and libxen-dev for hostile-frontend.c.
#   --boot-root             instead of the file checks, boot the domU's root from the share through
#                           the initramfs of `pvfs-vm boot-files --transport xen`: the share holds
#                           a small busybox root whose init reports and writes a marker that
#                           dom0 reads back
#   --boot-init PATH        with --boot-root: the init the domU runs from the share (default
#                           /sbin/pvfs-boot-marker; /sbin/init boots the tree's own init, e.g. systemd,
#                           whose tree then holds boot-9p-root.sh's marker unit)
#   --posix                 instead of the file checks: the POSIX suite (posix/pvfs-posix-suite.c,
#                           its smaller matrices) once on an ext4 of the domU's own and once on the
#                           share, compared case by case by posix-compare.sh (posix/known-differences)
#   --posix-full            the same with the full matrices (slow: every request crosses nested Xen)
#   --restart-check         instead of the file checks: the domU writes a file, the backend is
#                           killed (SIGKILL) and restarted while the share is mounted
#                           (backend_restart), requests then fail with EIO instead of hanging, the
#                           share unmounts, and dom0 finds the file through the backend's view
#   --domu-mem MIB          domU memory (default 256)
#   --tag TAG               9pfs tag (default share)
#   --quota BYTES           quota the backend enforces: enables the df and EDQUOT checks
#   --quota-fs BYTES        share is a dom0 tmpfs of that size: df and ENOSPC checks against a
#                           backend without quotas
#   --skip a,b  --large MIB checks to skip / large-file size (default 8); the QEMU backends skip
#                           mknod by default (QEMU's backend fails mkfifo with ENXIO)
#   --readdir N             files the readdir check creates (default 30: every 9P request costs
#                           tens to hundreds of milliseconds in nested Xen under emulation)
#   --dom0-file SRC[:DEST]  put a host file into dom0 (ELF binaries bring their libraries)
#   --dom0-tree SRC:DEST    put a host directory tree into dom0
#   --env NAME=VALUE        a setting for the hook (written to dom0's /etc/pvfs-xen.conf)
#   --dom0-append ARGS      extra dom0 kernel arguments;  --domu-append ARGS: extra domU ones
#   --cpu MODEL             QEMU CPU model (default $PVFS_XEN_CPU or max,-xsave; see README)
#   --dom0-mem MIB          dom0 memory (default 768, 1536 with pvfsd and --transport-check; QEMU
#                           gets dom0 + 1280 MiB)
#   --timeout S             bound on the whole QEMU run (default 1800)
#   --shell                 stop in a dom0 shell after the toolstack is up (interactive)
#   --log FILE              keep the serial log there
# environment: PVFS_XEN_BOOT_TRIES (default 3) boots of a dom0 that hangs before its init runs
# (PVFS_XEN_INIT_DEADLINE seconds, default 300), a known rare hang of nested Xen under TCG
# exit status: 0 all checks passed, 1 a check failed or the run did not finish, 2 setup error.
set -euo pipefail
XEN_DIR=$(cd "$(dirname "$0")" && pwd)
. "$XEN_DIR/../lib.sh"

BACKEND=qemu-xl TAG=share QUOTA="" QUOTAFS="" SKIP="-" LARGE=8 NDIR=30 DOM0MEM=768 TIMEOUT=1800 SHELLMODE=0 KEEPLOG=""
BOOTINIT=/sbin/pvfs-boot-marker DOMUMEM=256
DOM0MEM_SET=0 BOOTROOT=0 RESTART=0 CPU=${PVFS_XEN_CPU:-max,-xsave} DOM0APPEND="" DOMUAPPEND="" PVFSD_BIN="" PVFSVM_BIN="" STORE="" VM="" BUILD_PVFS=0
DOM0_FILES=() DOM0_TREES=() HOOK_ENV=() POSIX="" TRANSPORT=0 TESTBACKEND_BIN=""
while [ $# -gt 0 ]; do
    case $1 in
    --backend) BACKEND=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --boot-root) BOOTROOT=1; shift ;;
    --boot-init) BOOTINIT=$2; shift 2 ;;
    --restart-check) RESTART=1; shift ;;
    --transport-check) TRANSPORT=1; shift ;;
    --test-backend) TESTBACKEND_BIN=$2; shift 2 ;;
    --posix) POSIX=quick; shift ;;
    --posix-full) POSIX=full; shift ;;
    --domu-mem) DOMUMEM=$2; shift 2 ;;
    --backend-cmd) BACKEND=command; HOOK_ENV+=("XEN_BACKEND_CMD=$2"); shift 2 ;;
    --attach-cmd) HOOK_ENV+=("XEN_ATTACH_CMD=$2"); shift 2 ;;
    --quota) QUOTA=$2; shift 2 ;;
    --quota-fs) QUOTAFS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --large) LARGE=$2; shift 2 ;;
    --readdir) NDIR=$2; shift 2 ;;
    --dom0-file) DOM0_FILES+=("$2"); shift 2 ;;
    --dom0-tree) DOM0_TREES+=("$2"); shift 2 ;;
    --env) HOOK_ENV+=("$2"); shift 2 ;;
    --pvfsd) PVFSD_BIN=$2; shift 2 ;;
    --pvfs-vm) PVFSVM_BIN=$2; shift 2 ;;
    --build-pvfs) BUILD_PVFS=1; shift ;;
    --store) STORE=$2; shift 2 ;;
    --vm) VM=$2; shift 2 ;;
    --dom0-mem) DOM0MEM=$2; DOM0MEM_SET=1; shift 2 ;;
    --cpu) CPU=$2; shift 2 ;;
    --dom0-append) DOM0APPEND=$2; shift 2 ;;
    --domu-append) DOMUAPPEND=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --shell) SHELLMODE=1; shift ;;
    --log) KEEPLOG=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1" ;;
    esac
done

case $BACKEND in
qemu-xl | qemu-manual | pvfsd | command) HOOK=$XEN_DIR/backends/$BACKEND.sh ;;
*) HOOK=$BACKEND ;;
esac
# Known gap of QEMU 7.2's 9pfs backend (security_model=none): mkfifo gives ENXIO (it reopens the
# new node to set its mode). Skipped for the QEMU backends unless --skip says otherwise.
if [ "$SKIP" = - ]; then
    case "$BACKEND ${HOOK_ENV[*]}" in qemu-* | *xen-qemu-system*) SKIP=mknod ;; *) SKIP="" ;; esac
fi
[ -f "$HOOK" ] || gdie "no backend hook $HOOK"
[ -f /boot/xen-4.17-amd64.gz ] || gdie "no /boot/xen-4.17-amd64.gz (apt-get install xen-hypervisor-4.17-amd64 xen-utils-4.17 qemu-system-xen)"
XENBIN=/usr/lib/xen-4.17/bin

guest_setup
T0=$(now)
KERNEL=$(guest_kernel)
KVER=$(guest_kver "$KERNEL")
VMLINUX=$(guest_vmlinux "$KERNEL")
XEN=$GUEST_CACHE/xen-$(sha256sum </boot/xen-4.17-amd64.gz | cut -c1-16)
[ -s "$XEN" ] || { zcat /boot/xen-4.17-amd64.gz >"$XEN.$$" && mv "$XEN.$$" "$XEN"; } # multiboot wants the plain ELF

# strip_into_dom0 BIN NAME: the binary as /usr/local/bin/NAME in dom0, without its debug info
# (which would double its size in dom0's memory).
strip_into_dom0() {
    if command -v strip >/dev/null && strip -o "$GUEST_WORK/$2" "$1"; then
        DOM0_FILES+=("$GUEST_WORK/$2:/usr/local/bin/$2")
    else
        DOM0_FILES+=("$1:/usr/local/bin/$2")
    fi
}

# ---- pvfsd backend: binaries built with the Swift runtime linked in, plus the store.
if [ "$BACKEND" = pvfsd ]; then
    [ -n "$STORE" ] && [ -n "$VM" ] || gdie "--backend pvfsd needs --store and --vm"
    if [ "$BUILD_PVFS" = 1 ]; then
        . "$XEN_DIR/release-builds.sh"
        ensure_release_builds "$GUEST_REPO_ROOT" || gdie "cannot build the release binaries"
        PVFSD_BIN=${PVFSD_BIN:-$GUEST_REPO_ROOT/.build/release/pvfsd}
        PVFSVM_BIN=${PVFSVM_BIN:-$GUEST_REPO_ROOT/.build/release/pvfs-vm}
    fi
    [ -x "$PVFSD_BIN" ] && [ -x "$PVFSVM_BIN" ] || gdie "pvfsd backend needs --pvfsd BIN --pvfs-vm BIN (or --build-pvfs)"
    export PVFS_VM_BIN=$PVFSVM_BIN # boot-files for --boot-root
    strip_into_dom0 "$PVFSD_BIN" pvfsd
    strip_into_dom0 "$PVFSVM_BIN" pvfs-vm
    # dom0's root is a tmpfs of half its memory holding the tools, the stripped binaries and the
    # store: the quota checks need the VM's 64 MiB quota to run out before that filesystem does.
    [ "$DOM0MEM_SET" = 1 ] || DOM0MEM=1536
    DOM0_TREES+=("$STORE:/var/lib/pvfs")
    HOOK_ENV+=("PVFS_XEN_STORE=/var/lib/pvfs" "PVFS_XEN_VM=$VM")
fi

# ---- the transport check: the test backend, pvfs-vm, the hostile frontend, two domU images.
if [ "$TRANSPORT" = 1 ]; then
    if [ "$BUILD_PVFS" = 1 ]; then
        . "$XEN_DIR/release-builds.sh"
        ensure_release_builds "$GUEST_REPO_ROOT" pvfs-vm pvfs-xen-test-backend || gdie "cannot build the release binaries"
        TESTBACKEND_BIN=${TESTBACKEND_BIN:-$GUEST_REPO_ROOT/.build/release/pvfs-xen-test-backend}
        PVFSVM_BIN=${PVFSVM_BIN:-$GUEST_REPO_ROOT/.build/release/pvfs-vm}
    fi
    [ -x "$TESTBACKEND_BIN" ] && [ -x "$PVFSVM_BIN" ] ||
        gdie "--transport-check needs --test-backend BIN --pvfs-vm BIN (or --build-pvfs)"
    strip_into_dom0 "$TESTBACKEND_BIN" pvfs-xen-test-backend
    strip_into_dom0 "$PVFSVM_BIN" pvfs-vm
    # dom0's root (half its memory) holds the tools, two Swift binaries and three domU images.
    [ "$DOM0MEM_SET" = 1 ] || DOM0MEM=1536
    [ -x /opt/swift/usr/libexec/swift/linux/swift-backtrace-static ] &&
        DOM0_FILES+=("/opt/swift/usr/libexec/swift/linux/swift-backtrace-static:/bin/swift-backtrace")
    gcc -O2 -Wall -o "$GUEST_WORK/hostile-frontend" "$XEN_DIR/hostile-frontend.c" -lxenstore -lxengnttab -lxenevtchn ||
        gdie "cannot build hostile-frontend.c (apt-get install gcc libxen-dev)"
    # The domUs' images: busybox, their modules, the xenstore tools, domU-init.sh as /init.
    transport_domu_image() { # NAME MODULE...
        local name=$1 b
        shift
        guest_initramfs_new
        guest_initramfs_busybox
        guest_initramfs_modules "$KVER" "$@"
        for b in xenstore xenstore-read xenstore-write xenstore-list xenstore-rm xenstore-exists xenstore-chmod \
            xenstore-ls xenstore-watch; do
            guest_initramfs_bin "/usr/bin/$b"
        done
        [ "$name" = hostile ] && guest_initramfs_bin "$GUEST_WORK/hostile-frontend" /bin/hostile-frontend
        guest_initramfs_file "$XEN_DIR/domU-init.sh" /init 0755
        guest_initramfs_results
        guest_initramfs_pack "pvfs-xen-$name-$KVER"
    }
    # shellcheck disable=SC2086
    TRANSPORT_INITRD=$(transport_domu_image transport $GUEST_MODS_9P_XEN)
    HOSTILE_INITRD=$(transport_domu_image hostile xen-evtchn xen-gntalloc)
fi

# ---- domU: the standard test initramfs, xen flavour.
[ "$TRANSPORT" = 1 ] || DOMU_INITRD=$(guest_test_initramfs "$KVER" xen ${POSIX:+posix})

# ---- dom0 base image (cached): busybox, Xen modules and tools, QEMU's Xen backend, the kernel.
guest_initramfs_new
guest_initramfs_busybox
# loop + ext4 (+ crc32c, which ext4 requests at mount) hold the share: dom0's tmpfs has no user xattrs.
# fuse: `pvfs-vm mount` shows dom0 what the domU wrote into a pvfs VM.
guest_initramfs_modules "$KVER" xen-evtchn xen-privcmd xenfs xen-gntdev xen-gntalloc loop crc32c_generic ext4 fuse
for b in xl xenstored xenconsoled xen-init-dom0 libxl-save-helper; do guest_initramfs_bin "$XENBIN/$b"; done
for b in xenstore xenstore-read xenstore-write xenstore-list xenstore-ls xenstore-rm xenstore-exists \
    xenstore-chmod xenstore-watch; do
    guest_initramfs_bin "/usr/bin/$b"
done
guest_initramfs_bin /usr/libexec/xen-qemu-system-i386
for l in /lib/x86_64-linux-gnu/libgcc_s.so.1; do [ -e "$l" ] && guest_initramfs_file "$(readlink -f "$l")" "$l" 0644; done
guest_initramfs_file /etc/xen/xl.conf /etc/xen/xl.conf
guest_initramfs_tree /etc/xen/scripts /etc/xen/scripts
[ -d /usr/share/qemu/keymaps ] && guest_initramfs_tree /usr/share/qemu/keymaps /usr/share/qemu/keymaps
for d in /var/lib/xen /var/lib/xenstored /var/log/xen /var/run/xen /var/run/xenstored /srv /usr/local/bin; do
    guest_initramfs_dir "$d"
done
guest_initramfs_text /etc/passwd 0644 $'root:x:0:0:root:/root:/bin/sh\n'
guest_initramfs_text /etc/group 0644 $'root:x:0:\n'
guest_initramfs_file "$VMLINUX" /guest/vmlinux 0644
guest_initramfs_file "$XEN_DIR/dom0-init.sh" /init 0755
guest_initramfs_results
DOM0_BASE=$(guest_initramfs_pack "pvfs-xen-dom0-$KVER" none)

# ---- per-run layer: settings, the domU images, the backend hook, extra files. Appended to the base cpio
# (the kernel unpacks concatenated archives in order).
DOMU_EXTRA="pvfs.large=$LARGE pvfs.readdir=$NDIR${DOMUAPPEND:+ $DOMUAPPEND}"
[ -n "$SKIP" ] && DOMU_EXTRA+=" pvfs.skip=$SKIP"
[ "$RESTART" = 1 ] && DOMU_EXTRA+=" pvfs.run=restart"
[ -n "$POSIX" ] && DOMU_EXTRA+=" pvfs.run=posix"
[ "$POSIX" = quick ] && DOMU_EXTRA+=" pvfs.posixargs=-q"
if [ -n "$QUOTAFS" ]; then
    DOMU_EXTRA+=" pvfs.quota=$QUOTAFS pvfs.quotaerr=ENOSPC"
elif [ -n "$QUOTA" ]; then
    DOMU_EXTRA+=" pvfs.quota=$QUOTA"
fi
CONF="XEN_TAG='$TAG'
XEN_SHARE=/srv/share
XEN_QUOTA_FS='$QUOTAFS'
XEN_DOMU_EXTRA='$DOMU_EXTRA'
XEN_DOMU_MEM=$DOMUMEM
XEN_DOMU_WAIT=$((TIMEOUT - 60))
XEN_SHELL=$SHELLMODE
XEN_RESTART=$RESTART
"
for e in "${HOOK_ENV[@]}"; do
    v=${e#*=}
    CONF+="${e%%=*}='${v//\'/\'\\\'\'}'"$'\n'
done
guest_initramfs_new
if [ "$TRANSPORT" = 1 ]; then
    CONF+="XEN_SCENARIO=transport"$'\n'
    guest_initramfs_file "$XEN_DIR/transport-check.sh" /etc/pvfs-xen/transport-check.sh 0644
    guest_initramfs_file "$TRANSPORT_INITRD" /guest/transport-initrd.img 0644
    guest_initramfs_file "$HOSTILE_INITRD" /guest/hostile-initrd.img 0644
    for c in main churn hostile; do guest_initramfs_file "$XEN_DIR/$c.cfg" "/guest/$c.cfg" 0644; done
else
    guest_initramfs_file "$DOMU_INITRD" /guest/initrd.img 0644
fi
if [ "$BOOTROOT" = 1 ]; then
    # A minimal root tree: static busybox and an init that proves it ran from the 9P root.
    NONCE=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
    SEED=$GUEST_WORK/rootseed
    mkdir -p "$SEED"/{bin,sbin,etc,proc,sys,dev,tmp,run,var/lib,usr/bin,usr/sbin}
    cp /bin/busybox "$SEED/bin/busybox"
    for app in $(/bin/busybox --list-full); do [ -e "$SEED/$app" ] || ln -s /bin/busybox "$SEED/$app"; done
    cp "$XEN_DIR/boot-marker.sh" "$SEED/sbin/pvfs-boot-marker"
    chmod 755 "$SEED/sbin/pvfs-boot-marker"
    guest_boot_files "${VM:-bootroot}" --transport xen --tag "$TAG" --kernel "$KERNEL" --output "$GUEST_WORK/boot" \
        --on-failure poweroff --init "$BOOTINIT" --append "quiet loglevel=3 panic=-1 pvfs.nonce=$NONCE" >&2
    [ -s "$GUEST_WORK/boot/initrd.img" ] || gdie "boot-files produced no initrd"
    guest_initramfs_file "$GUEST_WORK/boot/initrd.img" /guest/boot-initrd.img 0644
    CONF+="XEN_DOMU_RAMDISK=/guest/boot-initrd.img
XEN_DOMU_CMDLINE='$(cat "$GUEST_WORK/boot/cmdline")'
XEN_MARKER_NONCE=$NONCE
"
    # pvfsd serves the VM from the store: its tree must hold /sbin/pvfs-boot-marker already
    # (pvfsd-e2e.sh builds its template so); the other backends serve a dom0 directory.
    if [ "$BACKEND" != pvfsd ]; then
        guest_initramfs_tree "$SEED" /srv/rootseed
        CONF+="XEN_SHARE_SEED=/srv/rootseed"$'\n'
    fi
fi
guest_initramfs_text /etc/pvfs-xen.conf 0644 "$CONF"
guest_initramfs_file "$HOOK" /etc/pvfs-xen/backend.sh 0644
for f in "${DOM0_FILES[@]}"; do
    src=${f%%:*} dest=${f#*:}
    [ "$dest" = "$f" ] && dest=$src
    if file -L "$src" | grep -q 'dynamically linked'; then guest_initramfs_bin "$src" "$dest"; else guest_initramfs_file "$src" "$dest" 0755; fi
done
for tr in "${DOM0_TREES[@]}"; do guest_initramfs_tree "${tr%%:*}" "${tr#*:}"; done
RUN_LAYER=$(guest_initramfs_pack pvfs-xen-run none)
DOM0_CPIO=$GUEST_WORK/dom0.cpio
cat "$DOM0_BASE" "$RUN_LAYER" >"$DOM0_CPIO"
T_BUILD=$(elapsed "$T0")
glog "dom0 image: $(du -m "$DOM0_CPIO" | cut -f1) MiB (built in ${T_BUILD}s); backend hook $(basename "$HOOK")"

# ---- boot Xen + dom0 under QEMU TCG.
XENARGS="console=com1 com1=115200,8n1 loglvl=warning guest_loglvl=warning dom0_mem=${DOM0MEM}M,max:${DOM0MEM}M dom0_max_vcpus=2 smap=0 smep=0 bootscrub=0"
DOM0ARGS="console=hvc0 earlyprintk=xen rdinit=/init quiet loglevel=3${DOM0APPEND:+ $DOM0APPEND}"
LOG=$GUEST_WORK/serial.log
: >"$LOG"
TAILPID=""
if [ "${PVFS_GUEST_VERBOSE:-0}" = 1 ]; then tail -n +1 -f "$LOG" >&2 & TAILPID=$!; fi
T1=$(now)
QRC=0
if [ "$SHELLMODE" = 1 ]; then
    qemu-system-x86_64 -accel tcg -cpu "$CPU" -m $((DOM0MEM + 1280)) -smp 2 -nographic -no-reboot -nic none \
        -kernel "$XEN" -append "$XENARGS" -initrd "$VMLINUX $DOM0ARGS,$DOM0_CPIO"
    exit 0
fi
# Nested Xen under TCG now and then hangs before dom0's init runs (last words "Poking KASLR using
# RDRAND RDTSC..."): nothing has run yet, so such a boot is killed and retried, up to BOOT_TRIES
# times. A dom0 that reached init is never retried: its failures are the test's.
BOOT_TRIES=${PVFS_XEN_BOOT_TRIES:-3} INIT_DEADLINE=${PVFS_XEN_INIT_DEADLINE:-300}
for try in $(seq 1 "$BOOT_TRIES"); do
    : >"$LOG"
    QRC=0
    timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu "$CPU" -m $((DOM0MEM + 1280)) -smp 2 \
        -nographic -no-reboot -monitor none -serial stdio -nic none \
        -kernel "$XEN" -append "$XENARGS" -initrd "$VMLINUX $DOM0ARGS,$DOM0_CPIO" </dev/null >>"$LOG" 2>&1 &
    QPID=$!
    GUEST_PIDS+=("$QPID")
    BOOT_START=$(now)
    REACHED=0
    while kill -0 "$QPID" 2>/dev/null; do
        if grep -aq 'PVFS-XEN\[' "$LOG"; then REACHED=1; break; fi
        WAITED=$(elapsed "$BOOT_START")
        [ "${WAITED%.*}" -ge "$INIT_DEADLINE" ] && break
        sleep 2
    done
    if [ "$REACHED" = 0 ] && kill -0 "$QPID" 2>/dev/null && [ "$try" -lt "$BOOT_TRIES" ]; then
        glog "boot $try: dom0 did not reach init within ${INIT_DEADLINE}s (last: $(tr -d '\r' <"$LOG" | grep -a . | tail -1 | cut -c1-100)); booting again"
        cp "$LOG" "$GUEST_WORK/serial-hung-$try.log"
        kill "$QPID" 2>/dev/null || true
        wait "$QPID" 2>/dev/null || true
        continue
    fi
    wait "$QPID" || QRC=$?
    break
done
[ -n "$TAILPID" ] && kill "$TAILPID" 2>/dev/null || true
T_RUN=$(elapsed "$T1")
[ -n "$KEEPLOG" ] && cp "$LOG" "$KEEPLOG"
[ "$QRC" = 124 ] && glog "QEMU timed out after ${TIMEOUT}s"

RC=0
LABEL=xen-9pfs/$BACKEND
[ "$TRANSPORT" = 1 ] && LABEL=xen-9pfs/transport
guest_results "$LOG" "$LABEL" || RC=1
if [ -n "$POSIX" ]; then
    "$GUEST_LIB_DIR/posix-compare.sh" --label "posix-xen/$BACKEND" "$LOG" >&2 || RC=1
fi
tr -d '\r' <"$LOG" | grep -a 'PVFS-XEN\[' | sed 's/^/  dom0: /' >&2 || true
[ "$QRC" = 0 ] || RC=1
TOOLS=$(tr -d '\r' <"$LOG" | sed -n 's/.*PVFS-TEST xen-dom0 ok .* toolstack up at \([0-9.]*\)s.*/\1/p' | head -1)
DOMU=$(tr -d '\r' <"$LOG" | sed -n 's/.*PVFS-TEST xen-domU-run ok domU ran \([0-9.]*\)s.*/\1/p' | head -1)
glog "timings: images ${T_BUILD}s; QEMU wall ${T_RUN}s (dom0 toolstack up at ${TOOLS:-?}s dom0 uptime, domU boot+checks ${DOMU:-?}s); total $(elapsed "$T0")s"
echo "$LABEL: $GUEST_RESULT_SUMMARY qemu_exit=$QRC wall=${T_RUN}s"
exit "$RC"
