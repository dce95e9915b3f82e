#!/bin/bash
# Tests/guest/xen/pvfsd-e2e.sh: pvfsd serves a real Xen PV domU over Xen PV 9pfs rings, end to end.
#
# Nested Xen 4.17 under QEMU TCG (run-xen-9pfs.sh --backend pvfsd), three runs:
#   1. file operations: the domU mounts its VM with
#        mount -t 9p -o trans=xen,version=9p2000.L pvfs-root /mnt
#      and runs the standard checks (fileops.sh), quota included (df shows the VM's 64 MiB quota,
#      writing past it fails with EDQUOT); dom0 then mounts the VM read-only through the store
#      (pvfs-vm mount) and verifies the files the domU wrote;
#   2. root on pvfs: the domU boots from the initramfs of `pvfs-vm boot-files --transport xen`
#      with its root on the VM; its init writes a marker that dom0 reads back through the store.
# The store: template "tiny" (make-tiny-tree.sh plus busybox's applets and the marker init),
# VM vmx provisioned with --quota-bytes 64M and bound to the Xen domain named domU.
#
#   3. pvfsd restarts: the domU writes a file, pvfsd is killed (SIGKILL) and started again while
#      the domU has the VM mounted; the new pvfsd adopts the device as a lost session, so the
#      domU's next request fails with EIO at once (no hang) and it unmounts; dom0 then finds the
#      file through the store.
# The POSIX run, only on request (--only posix): the domU runs the POSIX suite (its smaller
# matrices) on an ext4 of its own and on its VM over Xen 9pfs; the results are compared case by
# case (Tests/guest/posix-compare.sh), as run-posix-suite.sh does over TCP.
# The slower fourth run, only on request (--only debian12): a domU boots Debian 12 with systemd as
# its init from a VM provisioned from the debian12 template (hooks included), its root over Xen
# 9pfs from pvfsd; boot-9p-root.sh's marker unit writes the marker dom0 reads back.
#
# usage: Tests/guest/xen/pvfsd-e2e.sh [--keep] [--only files|boot|restart|posix|debian12] [--timeout S]
#   --keep          keep the work directory (store, logs) and print its path
#   --only RUN      one of the runs (files, boot and restart run by default)
#   --timeout S     bound on each QEMU run (default 900 for the file checks, 600 for the boot)
# Environment: PVFS_XEN_CPU (QEMU CPU model, default max,-xsave), PVFS_GUEST_VERBOSE=1.
# exit status: 0 every check of every run passed, 1 a check failed, 2 setup error.
set -uo pipefail
XEN_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$XEN_DIR/../../.." && pwd)
export PATH=/opt/swift/usr/bin:$PATH
KEEP=0 ONLY="" TIMEOUT=""
while [ $# -gt 0 ]; do
    case $1 in
    --keep) KEEP=1; shift ;;
    --only) ONLY=$2; case $ONLY in files | boot | restart | posix | debian12) ;; *) echo "--only files|boot|restart|posix|debian12" >&2; exit 2 ;; esac; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
say() { echo "pvfsd-e2e: $*" >&2; }
die() { say "$*"; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root"
[ -e /boot/xen-4.17-amd64.gz ] || die "no /boot/xen-4.17-amd64.gz"
T0=$(date +%s)

# ---- binaries: release, Swift runtime linked in (they run in dom0). Rebuilt when a source is newer.
REL=$ROOT/.build/release
. "$ROOT/Tests/guest/xen/release-builds.sh"
ensure_release_builds "$ROOT" || die "cannot build the release binaries"
T_BUILD=$(($(date +%s) - T0))

# ---- store, template, VM, binding.
WORK=$(mktemp -d /var/tmp/pvfsd-xen-e2e.XXXXXX)
if [ "$KEEP" = 1 ]; then say "work directory $WORK"; else trap 'rm -rf "$WORK"' EXIT; fi
STORE=$WORK/store TREE=$WORK/tiny
"$ROOT/scripts/lib/make-tiny-tree.sh" "$TREE" || die "make-tiny-tree failed"
# The boot run's init needs more of busybox than the tiny tree links.
for app in $(/bin/busybox --list-full); do [ -e "$TREE/$app" ] || [ -L "$TREE/$app" ] || { mkdir -p "$TREE/$(dirname "$app")"; ln -s /bin/busybox "$TREE/$app"; }; done
install -m 755 "$XEN_DIR/boot-marker.sh" "$TREE/sbin/pvfs-boot-marker"
mkdir -p "$TREE/run" "$TREE/var/lib"
QUOTA=$((64 << 20))
{
    "$REL/pvfs-template" create tiny --from "$TREE" --store "$STORE" &&
        "$REL/pvfs-vm" provision --store "$STORE" --template tiny --quota-bytes 64M --no-hooks vmx &&
        "$REL/pvfs-vm" bind --store "$STORE" vmx --xen-name domU
} >"$WORK/setup.log" 2>&1 || { cat "$WORK/setup.log" >&2; die "store setup failed"; }
say "store ready: template tiny, VM vmx (quota 64 MiB) bound to Xen domain domU"

HARNESS=("$XEN_DIR/run-xen-9pfs.sh" --backend pvfsd --store "$STORE" --vm vmx --pvfsd "$REL/pvfsd"
    --pvfs-vm "$REL/pvfs-vm" --tag pvfs-root)
RESULTS=() FAILED=0
run() { # run NAME ARGS...
    local name=$1 start rc line
    shift
    start=$(date +%s)
    "${HARNESS[@]}" --log "$WORK/$name.log" "$@" 2>&1 | tee "$WORK/$name.out" >&2
    rc=${PIPESTATUS[0]}
    line=$(grep -a '^xen-9pfs/' "$WORK/$name.out" | tail -1)
    RESULTS+=("$(printf '%-6s %-4s %5ss  %s' "$name" "$([ "$rc" = 0 ] && echo ok || echo FAIL)" "$(($(date +%s) - start))" "${line#*: }")")
    [ "$rc" = 0 ] || FAILED=1
}
if [ -z "$ONLY" ] || [ "$ONLY" = files ]; then
    run files --quota "$QUOTA" --timeout "${TIMEOUT:-900}"
fi
if [ -z "$ONLY" ] || [ "$ONLY" = boot ]; then
    run boot --boot-root --timeout "${TIMEOUT:-600}"
fi
if [ -z "$ONLY" ] || [ "$ONLY" = restart ]; then
    run restart --restart-check --timeout "${TIMEOUT:-600}"
fi
if [ "$ONLY" = posix ]; then
    run posix --posix --domu-mem 384 --timeout "${TIMEOUT:-2400}"
fi
if [ "$ONLY" = debian12 ]; then
    # A store of its own: the debian12 template (debootstrap, cached by the recipe builder), VM
    # boot12 provisioned with the hooks, the marker unit installed through a FUSE mount.
    STORE12=$WORK/store12
    {
        "$REL/pvfs-template" create debian12 --store "$STORE12" &&
            "$REL/pvfs-vm" provision --store "$STORE12" --template debian12 boot12 &&
            "$REL/pvfs-vm" bind --store "$STORE12" boot12 --xen-name domU &&
            mkdir -p "$WORK/mnt12" &&
            "$REL/pvfs-vm" mount --store "$STORE12" boot12 "$WORK/mnt12" &&
            "$ROOT/Tests/guest/boot-9p-root.sh" --prepare-tree "$WORK/mnt12" &&
            "$REL/pvfs-vm" umount --store "$STORE12" "$WORK/mnt12"
    } >"$WORK/setup12.log" 2>&1 || { cat "$WORK/setup12.log" >&2; die "debian12 store setup failed"; }
    say "store ready: template debian12, VM boot12 bound to Xen domain domU, marker unit installed"
    HARNESS=("$XEN_DIR/run-xen-9pfs.sh" --backend pvfsd --store "$STORE12" --vm boot12 --pvfsd "$REL/pvfsd"
        --pvfs-vm "$REL/pvfs-vm" --tag pvfs-root)
    run debian12 --boot-root --boot-init /sbin/init --dom0-mem 1536 --domu-mem 512 --timeout "${TIMEOUT:-1800}"
fi

echo "pvfsd-e2e: build ${T_BUILD}s, total $(($(date +%s) - T0))s"
printf 'pvfsd-e2e: %s\n' "${RESULTS[@]}"
[ "$KEEP" = 1 ] && echo "pvfsd-e2e: logs and store in $WORK"
exit $FAILED
