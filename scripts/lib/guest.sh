# shellcheck shell=bash
# scripts/lib/guest.sh: booting Linux guests under QEMU for the real-guest tests (Tests/guest) and
# the guest benchmarks (bench/); source it from bash.
#
# A script boots Debian's own kernel under QEMU software emulation (TCG) with a small busybox
# initramfs, lets the guest mount a server and reads what it printed from the serial log. This
# file provides:
#
#   guest_setup                      work dir + cleanup trap (kills what guest_spawn started)
#   guest_kernel / guest_kver        the guest kernel (newest /boot/vmlinuz-*-amd64, or $PVFS_GUEST_KERNEL)
#   guest_modules_order MOD...       module names in load order (dependencies first)
#   guest_initramfs_*                build a busybox initramfs from a recipe, cached by content hash
#   guest_boot_qemu                  boot QEMU TCG, serial log to a file, bounded by timeout
#   server_start KIND ...            start a 9P server (diod, pvfsd, custom) on 127.0.0.1:PORT
#   pvfsd_binary / pvfs_vm_binary    the binaries to run (the newest build unless named)
#
# scripts/lib/make-tiny-tree.sh builds the small root tree both use for templates.
#
# Environment knobs (all optional):
#   PVFS_GUEST_KERNEL   kernel image to boot (default: newest /boot/vmlinuz-*-amd64)
#   PVFS_GUEST_CACHE    cache dir for initramfs images and built helpers (default /var/tmp/pvfs-guest-cache)
#   PVFS_GUEST_MEM      guest memory in MiB (default 512)
#   PVFS_GUEST_SMP      guest vCPUs (default 1)
#   PVFS_GUEST_KEEP     1 = always keep the work dir (logs, served trees), 0 = never,
#                       fail (default) = keep it when the script fails
#   PVFS_GUEST_VERBOSE  1 = copy the guest's serial output to stderr while it runs
#   PVFSD               the pvfsd binary (default: pvfsd on PATH, else the newest .build one)

GUEST_SHARED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_REPO_ROOT=$(cd "$GUEST_SHARED_DIR/../.." && pwd)
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

# release_binaries: sets PVFSD, PVFS_VM_BIN and PVFS_TEMPLATE_BIN, each from the environment or
# else this checkout's release build (built first when one of the three is missing), so that a
# benchmark measures optimised code.
release_binaries() {
    local bin=$GUEST_REPO_ROOT/.build/release
    if [ -z "${PVFSD:-}" ] || [ -z "${PVFS_VM_BIN:-}" ] || [ -z "${PVFS_TEMPLATE_BIN:-}" ]; then
        if [ ! -x "$bin/pvfsd" ] || [ ! -x "$bin/pvfs-vm" ] || [ ! -x "$bin/pvfs-template" ]; then
            glog "building release binaries"
            (cd "$GUEST_REPO_ROOT" && PATH=/opt/swift/usr/bin:$PATH swift build -c release >&2)
        fi
    fi
    PVFSD=${PVFSD:-$bin/pvfsd}
    PVFS_VM_BIN=${PVFS_VM_BIN:-$bin/pvfs-vm}
    PVFS_TEMPLATE_BIN=${PVFS_TEMPLATE_BIN:-$bin/pvfs-template}
}

# static_program SRC NAME CFLAGS...: prints the path of a static build of SRC for the guest,
# cached in GUEST_CACHE under NAME and the source's content (an edited source is built again).
static_program() {
    local src=$1 name=$2 out
    shift 2
    out=$GUEST_CACHE/$name-$(sha256sum <"$src" | cut -c1-16)
    if [ ! -x "$out" ]; then
        cc -static "$@" -o "$out.$$" "$src" || gdie "cannot build $src (static glibc needed)"
        mv "$out.$$" "$out"
    fi
    echo "$out"
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
