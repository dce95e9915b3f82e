# shellcheck shell=bash
# Tests/guest/lib.sh: shared pieces of the real-guest tests (source it from bash).
#
# A test here boots Debian's own kernel under QEMU software emulation (TCG) with a
# small busybox initramfs, lets the guest mount a 9P2000.L server and run checks,
# and reads the results back from the serial log. This file provides:
#
#   guest_setup                      work dir + cleanup trap (kills what guest_spawn started)
#   guest_kernel / guest_kver        the guest kernel (newest /boot/vmlinuz-*-amd64, or $PVFS_GUEST_KERNEL)
#   guest_modules_order MOD...       module names in load order (dependencies first)
#   guest_initramfs_*                build a busybox initramfs from a recipe, cached by content hash
#   guest_simple_initramfs NAME INIT MOD...   the common case: busybox + modules + an /init
#   guest_helper                     the static pvfs-guest-helper binary (built once, cached)
#   guest_test_initramfs             the standard test initramfs (guest-init.sh + fileops.sh)
#   guest_posix_suite / guest_posix_image   the POSIX suite program and the ext4 image it runs on
#                                    inside the guest (pvfs.run=posix; run-posix-suite.sh)
#   guest_boot_qemu                  boot QEMU TCG, serial log to a file, bounded by timeout
#   guest_results LOG                parse PVFS-TEST markers; non-zero on a failure or no DONE
#   guest_initramfs_results          put lib/results.sh into an image (as /lib/pvfs/results.sh)
#   server_start KIND ...            start a 9P server (diod, pvfsd, custom) on 127.0.0.1:PORT
#
# Result format (lib/results.sh, which writes and reads it; printed on the guest's console):
#   PVFS-TEST <name> ok|fail|skip <detail...>
#   PVFS-TEST-DONE [summary]
#
# Environment knobs (all optional):
#   PVFS_GUEST_KERNEL   kernel image to boot (default: newest /boot/vmlinuz-*-amd64)
#   PVFS_GUEST_CACHE    cache dir for initramfs images and the helper (default /var/tmp/pvfs-guest-cache)
#   PVFS_GUEST_MEM      guest memory in MiB (default 512)
#   PVFS_GUEST_SMP      guest vCPUs (default 1)
#   PVFS_GUEST_KEEP     1 = always keep the work dir (logs, served trees), 0 = never,
#                       fail (default) = keep it when the script fails
#   PVFS_GUEST_VERBOSE  1 = copy the guest's serial output to stderr while it runs
#   PVFSD               the pvfsd binary (default: pvfsd on PATH, else .build/debug/pvfsd)

GUEST_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_REPO_ROOT=$(cd "$GUEST_LIB_DIR/../.." && pwd)
. "$GUEST_LIB_DIR/lib/results.sh"
GUEST_CACHE=${PVFS_GUEST_CACHE:-/var/tmp/pvfs-guest-cache}
GUEST_MEM=${PVFS_GUEST_MEM:-512}
GUEST_SMP=${PVFS_GUEST_SMP:-1}
# Bump when the initramfs layout changes so that stale cached images are not reused.
GUEST_LAYOUT_VERSION=2

GUEST_WORK=""
SERVER_CUSTOM_ARGV=()
GUEST_PIDS=()
GUEST_CLEANUPS=()

glog() { printf '[guest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
gdie() { glog "error: $*"; exit 2; }

now() { date +%s.%N; }
elapsed() { printf '%.1f' "$(echo "$(now) - $1" | bc)"; }

# guest_setup: create the work dir and install the cleanup trap. Call once per script.
guest_setup() {
    mkdir -p "$GUEST_CACHE"
    GUEST_WORK=$(mktemp -d /tmp/pvfs-guest.XXXXXX)
    chmod 755 "$GUEST_WORK" # servers may walk into it as an unprivileged user (diod attaches as nobody)
    trap guest_cleanup EXIT
    trap 'exit 130' INT TERM
}

# guest_on_cleanup CMD...: run CMD (eval'd) at exit, before the work dir goes.
guest_on_cleanup() { GUEST_CLEANUPS+=("$*"); }

guest_cleanup() {
    local rc=$? pid i
    for pid in "${GUEST_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    for ((i = ${#GUEST_CLEANUPS[@]} - 1; i >= 0; i--)); do eval "${GUEST_CLEANUPS[$i]}" || true; done
    if [ -n "$GUEST_WORK" ] && [ -d "$GUEST_WORK" ]; then
        if [ "${PVFS_GUEST_KEEP:-fail}" = 1 ] || { [ "$rc" -ne 0 ] && [ "${PVFS_GUEST_KEEP:-fail}" = fail ]; }; then
            glog "work dir kept: $GUEST_WORK"
        else
            rm -rf "$GUEST_WORK"
        fi
    fi
    return "$rc"
}

# guest_spawn LOGFILE CMD...: start CMD in the background, remember its pid (GUEST_LAST_PID).
guest_spawn() {
    local log=$1; shift
    "$@" >"$log" 2>&1 &
    GUEST_LAST_PID=$!
    GUEST_PIDS+=("$GUEST_LAST_PID")
}

# ---------------------------------------------------------------- kernel and modules

guest_kernel() {
    if [ -n "${PVFS_GUEST_KERNEL:-}" ]; then echo "$PVFS_GUEST_KERNEL"; return; fi
    local k
    k=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1)
    [ -n "$k" ] || gdie "no /boot/vmlinuz-*-amd64 (apt-get install linux-image-amd64)"
    echo "$k"
}

# guest_kver [KERNEL]: the module directory name for a kernel image.
guest_kver() {
    local k=${1:-$(guest_kernel)}
    local v=${k##*/vmlinuz-}
    [ -d "/lib/modules/$v" ] || gdie "no /lib/modules/$v for kernel $k"
    echo "$v"
}

# guest_modules_order KVER MOD...: print module names so that each follows its dependencies.
guest_modules_order() {
    local kver=$1; shift
    local -A seen=()
    local out=()
    _gmo_visit() {
        local m=${1//-/_} d deps
        [ -n "${seen[$m]:-}" ] && return 0
        seen[$m]=1
        deps=$(modinfo -k "$kver" -F depends "$m" 2>/dev/null) || gdie "module $m not found for $kver"
        for d in ${deps//,/ }; do _gmo_visit "$d"; done
        out+=("$m")
    }
    local m
    for m in "$@"; do _gmo_visit "$m"; done
    printf '%s\n' "${out[@]}"
}

# Module sets (the notes in /work/shared/notes/guest-lab.md list the order these resolve to).
GUEST_MODS_VIRTIO_NET="virtio_pci virtio_net"
GUEST_MODS_9P_TCP="9pnet_fd 9p"
GUEST_MODS_9P_XEN="9pnet_xen 9p"
GUEST_MODS_VIRTIOFS="virtio_pci virtiofs"

# ---------------------------------------------------------------- initramfs recipes
#
# A recipe is a list of lines "file DEST MODE SRC", "dir DEST", "link DEST TARGET".
# Its hash (with the content hash of every SRC) names the cached image, so unchanged
# inputs reuse the image and any change to a script or module rebuilds it.

GUEST_RECIPE=()

guest_initramfs_new() { GUEST_RECIPE=(); }
guest_initramfs_dir() { GUEST_RECIPE+=("dir $1"); }
guest_initramfs_link() { GUEST_RECIPE+=("link $1 $2"); }
# guest_initramfs_file SRC DEST [MODE]
guest_initramfs_file() {
    [ -f "$1" ] || gdie "initramfs input missing: $1"
    GUEST_RECIPE+=("file $2 ${3:-0644} $1")
}
# guest_initramfs_text DEST MODE TEXT: a generated file.
guest_initramfs_text() {
    local f
    f=$(mktemp "$GUEST_WORK/gen.XXXXXX")
    printf '%s' "$3" >"$f"
    guest_initramfs_file "$f" "$1" "$2"
}

guest_initramfs_busybox() {
    local bb=${PVFS_GUEST_BUSYBOX:-/bin/busybox} app
    [ -x "$bb" ] || gdie "no static busybox at $bb (apt-get install busybox-static)"
    file -L "$bb" 2>/dev/null | grep -q 'statically linked' || gdie "$bb is not statically linked"
    local d
    for d in bin sbin usr/bin usr/sbin proc sys dev tmp run etc mnt root var; do guest_initramfs_dir "/$d"; done
    guest_initramfs_file "$bb" /bin/busybox 0755
    for app in $("$bb" --list-full); do
        [ "/$app" = /bin/busybox ] && continue
        guest_initramfs_link "/$app" /bin/busybox
    done
}

# guest_initramfs_modules KVER MOD...: modules (plus dependencies) under /modules, load order in /modules/order.
guest_initramfs_modules() {
    local kver=$1; shift
    local m f order=""
    guest_initramfs_dir /modules
    for m in $(guest_modules_order "$kver" "$@"); do
        f=$(modinfo -k "$kver" -n "$m") || gdie "module $m not found"
        case $f in *.ko) ;; *) gdie "compressed module $f: decompress support not implemented" ;; esac
        guest_initramfs_file "$f" "/modules/$m.ko"
        order+="$m"$'\n'
    done
    guest_initramfs_text /modules/order 0644 "$order"
}

# guest_initramfs_tree SRC DEST: a host directory tree (files, dirs, symlinks kept as symlinks).
guest_initramfs_tree() {
    local src=${1%/} dest=${2%/} p rel
    [ -d "$src" ] || gdie "initramfs input missing: $src"
    guest_initramfs_dir "$dest"
    while IFS= read -r -d '' p; do
        rel=${p#"$src"}
        if [ -L "$p" ]; then
            guest_initramfs_link "$dest$rel" "$(readlink "$p")"
        elif [ -d "$p" ]; then
            guest_initramfs_dir "$dest$rel"
        elif [ -f "$p" ]; then
            guest_initramfs_file "$p" "$dest$rel" "$(stat -c %a "$p")"
        fi
    done < <(find "$src" -mindepth 1 -print0 | LC_ALL=C sort -z)
}

# guest_initramfs_bin SRC [DEST]: a dynamically linked host binary plus the libraries ldd lists
# (the libraries keep their host paths).
guest_initramfs_bin() {
    local src=$1 dest=${2:-$1} lib
    guest_initramfs_file "$src" "$dest" 0755
    while read -r lib; do
        [ -e "$lib" ] && guest_initramfs_file "$(readlink -f "$lib")" "$lib" 0755
    done < <(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' | sort -u)
}

# guest_initramfs_pack NAME [gzip|none]: print the path of the image for the current recipe,
# building it if needed. "none" gives a plain cpio (bigger, but unpacks faster under emulation).
guest_initramfs_pack() {
    local name=$1 comp=${2:-gzip} line kind dest mode src key img stage
    local manifest=""
    for line in "${GUEST_RECIPE[@]}"; do
        read -r kind dest mode src <<<"$line"
        if [ "$kind" = file ]; then
            manifest+="$kind $dest $mode $(sha256sum <"$src" | cut -c1-64)"$'\n'
        else
            manifest+="$line"$'\n'
        fi
    done
    key=$(printf 'layout %s %s\n%s' "$GUEST_LAYOUT_VERSION" "$comp" "$manifest" | sha256sum | cut -c1-16)
    img=$GUEST_CACHE/$name-$key.img
    [ "$comp" = none ] && img=$GUEST_CACHE/$name-$key.cpio
    if [ -s "$img" ]; then
        touch "$img"
        glog "initramfs $name: cached $(basename "$img")"
        echo "$img"
        return
    fi
    stage=$(mktemp -d "$GUEST_WORK/stage.XXXXXX")
    chmod 755 "$stage" # becomes the guest's /: unprivileged guest users must traverse it
    for line in "${GUEST_RECIPE[@]}"; do
        read -r kind dest mode src <<<"$line"
        case $kind in
        dir) mkdir -p "$stage$dest" ;;
        link) mkdir -p "$stage$(dirname "$dest")"; ln -sfn "$mode" "$stage$dest" ;;
        file) mkdir -p "$stage$(dirname "$dest")"; cp -L "$src" "$stage$dest"; chmod "$mode" "$stage$dest" ;;
        esac
    done
    # /dev/console so that /init has a console even before devtmpfs is mounted.
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
    if [ "$comp" = none ]; then
        (cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$img.$$"
    else
        (cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) | gzip -1 -n >"$img.$$"
    fi
    mv "$img.$$" "$img" # atomic: concurrent runs never see a partial image
    rm -rf "$stage"
    # Images of this name that have not been built or reused for two days are stale.
    find "$GUEST_CACHE" -maxdepth 1 -name "$name-*" ! -newer "$img" -mtime +2 -delete 2>/dev/null || true
    glog "initramfs $name: built $(basename "$img") ($(du -k "$img" | cut -f1) KiB)"
    echo "$img"
}

# guest_vmlinux [KERNEL]: path of the kernel's uncompressed ELF (cached). Xen loads it without
# decompressing, which saves tens of seconds under emulation.
guest_vmlinux() {
    local k=${1:-$(guest_kernel)} key out off magic tool
    key=$(sha256sum <"$k" | cut -c1-16)
    out=$GUEST_CACHE/vmlinux-$key
    if [ ! -s "$out" ]; then
        # Like the kernel's scripts/extract-vmlinux: find the compressed payload, unpack it to EOF.
        for magic in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
            tool=${magic%%:*}
            for off in $(LC_ALL=C grep -aboP "${magic#*:}" "$k" 2>/dev/null | cut -d: -f1); do
                if tail -c +$((off + 1)) "$k" | "$tool" -dc 2>/dev/null >"$out.$$"; [ -s "$out.$$" ] &&
                    [ "$(head -c 4 "$out.$$" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
                    mv "$out.$$" "$out"
                    break 2
                fi
            done
        done
        rm -f "$out.$$"
        [ -s "$out" ] || gdie "cannot extract vmlinux from $k"
    fi
    echo "$out"
}

# guest_initramfs_results: the result format's writer (lib/results.sh) as /lib/pvfs/results.sh,
# which every guest-side script sources.
guest_initramfs_results() { guest_initramfs_file "$GUEST_LIB_DIR/lib/results.sh" /lib/pvfs/results.sh 0644; }

# guest_simple_initramfs NAME INIT_SCRIPT MOD...: busybox + the modules (dependencies first,
# listed in /modules/order for `insmod /modules/$m.ko`) + INIT_SCRIPT as /init + the result
# format's writer; prints the image.
guest_simple_initramfs() {
    local name=$1 init=$2
    shift 2
    guest_initramfs_new
    guest_initramfs_busybox
    [ $# -gt 0 ] && guest_initramfs_modules "$(guest_kver)" "$@"
    guest_initramfs_file "$init" /init 0755
    guest_initramfs_results
    guest_initramfs_pack "$name"
}

# ---------------------------------------------------------------- the test initramfs

# guest_helper: path of the static pvfs-guest-helper (empty if no C compiler).
guest_helper() {
    local src=$GUEST_LIB_DIR/helper/pvfs-guest-helper.c key out
    key=$(sha256sum <"$src" | cut -c1-16)
    out=$GUEST_CACHE/pvfs-guest-helper-$key
    if [ ! -x "$out" ]; then
        if ! command -v cc >/dev/null; then glog "no C compiler: xattr and non-root checks will be skipped"; return 0; fi
        cc -static -Os -Wall -o "$out.$$" "$src" || gdie "building pvfs-guest-helper failed"
        mv "$out.$$" "$out"
    fi
    echo "$out"
}

# guest_posix_suite: path of the static POSIX suite program (built once per source, cached).
guest_posix_suite() {
    local src=$GUEST_LIB_DIR/posix/pvfs-posix-suite.c key out
    key=$(sha256sum <"$src" | cut -c1-16)
    out=$GUEST_CACHE/pvfs-posix-suite-$key
    if [ ! -x "$out" ]; then
        command -v cc >/dev/null || gdie "the POSIX suite needs a C compiler with static glibc (apt-get install gcc)"
        cc -static -O2 -Wall -o "$out.$$" "$src" || gdie "building pvfs-posix-suite failed"
        mv "$out.$$" "$out"
    fi
    echo "$out"
}

# guest_posix_image: an empty ext4 image (cached) the guest loop-mounts as the local filesystem
# the suite's results on the 9P share are compared with. 4 KiB blocks and 256-byte inodes, as
# mkfs.ext4 makes a root filesystem: long symlinks and 2000-byte xattr values fit.
guest_posix_image() {
    local out=$GUEST_CACHE/posix-ext4-v1.img
    if [ ! -s "$out" ]; then
        command -v mkfs.ext4 >/dev/null || gdie "mkfs.ext4 missing (apt-get install e2fsprogs)"
        rm -f "$out.$$"
        truncate -s 32M "$out.$$"
        # Fixed UUID, hash seed and time: the image, and so the initramfs, is the same every time.
        E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 -I 256 -N 8192 \
            -U 6a1c3f6e-9d2b-4c1e-8f00-000000000001 -E hash_seed=6a1c3f6e-9d2b-4c1e-8f00-000000000002,root_owner=0:0 \
            "$out.$$" >/dev/null || gdie "mkfs.ext4 failed"
        mv "$out.$$" "$out"
    fi
    echo "$out"
}

# guest_test_initramfs KVER [tcp|xen|virtiofs|all] [posix]: the standard test image (guest-init.sh runs
# fileops.sh). With "posix" it also holds the POSIX suite, its ext4 image and the modules to
# mount it (pvfs.run=posix).
guest_test_initramfs() {
    local kver=$1 trans=${2:-all} extra=${3:-} helper mods name
    case $trans in
    tcp) mods="$GUEST_MODS_VIRTIO_NET $GUEST_MODS_9P_TCP" ;;
    xen) mods="$GUEST_MODS_9P_XEN" ;;
    virtiofs) mods="$GUEST_MODS_VIRTIOFS" ;;
    all) mods="$GUEST_MODS_VIRTIO_NET $GUEST_MODS_9P_TCP $GUEST_MODS_9P_XEN" ;;
    *) gdie "unknown transport $trans" ;;
    esac
    name="pvfs-test-$trans-$kver"
    if [ "$extra" = posix ]; then
        # ext4 asks for crc32c at mount time, which no modprobe would load here.
        mods="$mods loop crc32c_generic ext4"
        name="pvfs-posix-$trans-$kver"
    fi
    guest_initramfs_new
    guest_initramfs_busybox
    # shellcheck disable=SC2086
    guest_initramfs_modules "$kver" $mods
    guest_initramfs_file "$GUEST_LIB_DIR/guest-init.sh" /init 0755
    guest_initramfs_file "$GUEST_LIB_DIR/fileops.sh" /fileops.sh 0755
    guest_initramfs_file "$GUEST_LIB_DIR/bench-workload.sh" /bench.sh 0755
    guest_initramfs_results
    helper=$(guest_helper)
    [ -n "$helper" ] && guest_initramfs_file "$helper" /bin/pvfs-guest-helper 0755
    guest_initramfs_text /etc/passwd 0644 $'root:x:0:0:root:/root:/bin/sh\npvfsuser:x:1000:1000::/tmp:/bin/sh\n'
    guest_initramfs_text /etc/group 0644 $'root:x:0:\npvfsuser:x:1000:\n'
    if [ "$extra" = posix ]; then
        guest_initramfs_file "$(guest_posix_suite)" /bin/pvfs-posix-suite 0755
        guest_initramfs_file "$(guest_posix_image)" /local.img 0644
    fi
    guest_initramfs_pack "$name"
}

# ---------------------------------------------------------------- QEMU

# The guest's network: user networking on a virtio-net NIC. A test may set other options
# (e.g. the isolated ones of `pvfs-vm qemu-args`).
GUEST_NET_ARGS=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=)

# guest_boot_qemu KERNEL INITRD APPEND LOG TIMEOUT [QEMU ARGS...]
# Boots with GUEST_NET_ARGS; returns QEMU's exit status (124 = timeout).
guest_boot_qemu() {
    local kernel=$1 initrd=$2 append=$3 log=$4 to=$5
    shift 5
    local rc=0 t0 tailpid=""
    command -v qemu-system-x86_64 >/dev/null || gdie "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
    : >"$log"
    if [ "${PVFS_GUEST_VERBOSE:-0}" = 1 ]; then
        tail -n +1 -f "$log" >&2 &
        tailpid=$!
    fi
    t0=$(now)
    timeout -k 5 "$to" qemu-system-x86_64 -accel tcg -cpu max -m "$GUEST_MEM" -smp "$GUEST_SMP" \
        -nographic -no-reboot -monitor none -serial stdio \
        -kernel "$kernel" -initrd "$initrd" -append "$append" \
        "${GUEST_NET_ARGS[@]}" \
        "$@" </dev/null >>"$log" 2>&1 &
    local qpid=$!
    GUEST_PIDS+=("$qpid")
    wait "$qpid" || rc=$?
    [ -n "$tailpid" ] && { kill "$tailpid" 2>/dev/null || true; wait "$tailpid" 2>/dev/null || true; }
    GUEST_BOOT_SECONDS=$(elapsed "$t0")
    [ "$rc" = 124 ] && glog "QEMU timed out after ${to}s (log: $log)"
    glog "QEMU finished in ${GUEST_BOOT_SECONDS}s (exit $rc)"
    return "$rc"
}

# The kernel arguments every test guest gets (serial console, quiet, panic ends the VM).
GUEST_BASE_APPEND="console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init"

# ---------------------------------------------------------------- results

# guest_markers LOG: the result lines (lib/results.sh), carriage returns and console noise stripped.
guest_markers() { markers_of "$1"; }

# guest_results LOG [LABEL]: print the results and a summary (GUEST_RESULT_SUMMARY); exit
# status 0 only if something passed, nothing failed and the guest printed PVFS-TEST-DONE.
guest_results() {
    local log=$1 label=${2:-guest}
    markers_tally "$log"
    {
        echo "---- $label results ----"
        markers_of "$log" | grep '^PVFS-TEST ' | awk '{ d=""; for (i=4;i<=NF;i++) d=d" "$i; printf "  %-5s %-22s%s\n", $3, $2, d }'
        echo "---- $label: ok=$MARKERS_OK fail=$MARKERS_FAIL skip=$MARKERS_SKIP done=$MARKERS_DONE ----"
    } >&2
    GUEST_RESULT_SUMMARY="ok=$MARKERS_OK fail=$MARKERS_FAIL skip=$MARKERS_SKIP done=$MARKERS_DONE"
    if [ "$MARKERS_DONE" != yes ]; then
        glog "$label: no PVFS-TEST-DONE; last lines of $log:"
        tr -d '\r' <"$log" | tail -40 >&2
        return 1
    fi
    markers_passed
}

# ---------------------------------------------------------------- 9P servers
#
# The one place that knows how to start each server. Every server listens on
# 127.0.0.1:PORT (QEMU user networking maps the guest's 10.0.2.2 to it) and the
# guest names what it wants with the 9P aname.
#
#   diod:   serves a directory tree; aname = that directory's absolute path.
#   pvfsd:  serves the VMs of a store; aname = the VM name.
#           Contract assumed: pvfsd --store STORE --listen tcp:127.0.0.1:PORT
#           (foreground, logs on stderr, ready when the port accepts connections).
#   custom: the words of SERVER_CUSTOM_ARGV (array) with {port}, {dir} and {store} substituted.

guest_free_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    gdie "no free port"
}

guest_wait_port() {
    local port=$1 pid=$2 i
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# newest_build NAME: the newer of the release and debug builds of NAME (a stale one would test
# old code); prints nothing when neither exists.
newest_build() {
    local b newest=""
    for b in "$GUEST_REPO_ROOT/.build/release/$1" "$GUEST_REPO_ROOT/.build/debug/$1"; do
        [ -x "$b" ] || continue
        if [ -z "$newest" ] || [ "$b" -nt "$newest" ]; then newest=$b; fi
    done
    [ -z "$newest" ] || printf '%s\n' "$newest"
}

pvfsd_binary() {
    if [ -n "${PVFSD:-}" ]; then echo "$PVFSD"; return; fi
    if command -v pvfsd >/dev/null; then command -v pvfsd; return; fi
    local newest
    newest=$(newest_build pvfsd)
    [ -n "$newest" ] || gdie "no pvfsd binary (set PVFSD=...)"
    echo "$newest"
}

# server_command KIND PORT DIR STORE: print the server's argv, one word per line.
server_command() {
    local kind=$1 port=$2 dir=$3 store=$4
    case $kind in
    diod)
        # -f foreground, -n no auth (munge), -l listen, -e export; -d 0 quiet.
        printf '%s\n' "$(command -v diod || echo /usr/sbin/diod)" -f -n -L stderr -l "127.0.0.1:$port" -e "$dir"
        ;;
    pvfsd)
        printf '%s\n' "$(pvfsd_binary)" --store "$store" --listen "tcp:127.0.0.1:$port"
        ;;
    custom)
        [ "${#SERVER_CUSTOM_ARGV[@]}" -gt 0 ] || gdie "custom server needs SERVER_CUSTOM_ARGV"
        local w
        for w in "${SERVER_CUSTOM_ARGV[@]}"; do
            w=${w//\{port\}/$port}
            w=${w//\{dir\}/$dir}
            printf '%s\n' "${w//\{store\}/$store}"
        done
        ;;
    *) gdie "unknown server kind $kind" ;;
    esac
}

# server_start KIND PORT DIR STORE LOG: start the server and wait until it accepts connections.
server_start() {
    local kind=$1 port=$2 dir=$3 store=$4 log=$5
    local -a argv
    mapfile -t argv < <(server_command "$kind" "$port" "$dir" "$store")
    glog "server: ${argv[*]}"
    guest_spawn "$log" "${argv[@]}"
    SERVER_PID=$GUEST_LAST_PID
    if ! guest_wait_port "$port" "$SERVER_PID"; then
        cat "$log" >&2
        gdie "$kind did not start listening on 127.0.0.1:$port"
    fi
}

server_stop() {
    [ -n "${SERVER_PID:-}" ] || return 0
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# ---------------------------------------------------------------- pvfs commands

# pvfs_vm_binary: the pvfs-vm to use ($PVFS_VM_BIN, else the newest build, else PATH).
pvfs_vm_binary() {
    if [ -n "${PVFS_VM_BIN:-}" ]; then printf '%s\n' "$PVFS_VM_BIN"; return; fi
    local newest
    newest=$(newest_build pvfs-vm)
    [ -n "$newest" ] || newest=$(command -v pvfs-vm || true)
    [ -n "$newest" ] || gdie "no pvfs-vm binary (build with swift build, or set PVFS_VM_BIN)"
    printf '%s\n' "$newest"
}

# guest_boot_files ARGS...: run `pvfs-vm boot-files ARGS...`.
guest_boot_files() {
    "$(pvfs_vm_binary)" boot-files "$@"
}

# guest_host_check DIR: what fileops.sh wrote, read back on the host under DIR/pvfs-fileops:
# every file of its MANIFEST with the same sha256, every path of its META with the same owner,
# mode, size and type. Returns 1 (and says why) when anything differs or is missing.
guest_host_check() {
    local dir=$1/pvfs-fileops meta_diff
    if [ ! -f "$dir/MANIFEST" ] || ! (cd "$dir" && sha256sum --quiet -c MANIFEST) >&2; then
        glog "host check: FAILED (MANIFEST missing or mismatched under $dir)"
        return 1
    fi
    glog "host check: MANIFEST matches ($(wc -l <"$dir/MANIFEST") files)"
    meta_diff=$(cd "$dir" && while read -r p rest; do
        got="$p $(stat -c '%u:%g %a %s %F' "$p")"
        [ "$got" = "$p $rest" ] || echo "  guest: $p $rest | host: $got"
    done <META)
    if [ -n "$meta_diff" ]; then
        glog "host check: metadata differs:"
        echo "$meta_diff" >&2
        return 1
    fi
    glog "host check: owners, modes, sizes and types match ($(wc -l <"$dir/META") paths)"
}
