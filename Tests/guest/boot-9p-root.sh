#!/bin/bash
# Tests/guest/boot-9p-root.sh: boot a guest whose root filesystem is a Debian tree served over
# 9P/TCP, or (--transport virtiofs) a pvfs VM served by pvfsd over virtio-fs.
#
# The boot artefacts come from `pvfs-vm boot-files` (Sources/PVFSCommands/BootArtifacts.swift):
# its initramfs brings up virtio-net, mounts the root with
#   mount -t 9p -o trans=tcp,port=PORT,version=9p2000.L,aname=ANAME,msize=... 10.0.2.2 /newroot
# (virtiofs: no network; `mount -t virtiofs TAG /newroot` on the vhost-user-fs device QEMU
# connects to the VM's vhost-user socket, its options from `pvfs-vm qemu-args --transport virtiofs`)
# and switch_roots into it. The test proves that the tree's own init ran from the served root:
#   --mode script   init=/usr/local/sbin/pvfs-boot-marker (a sh script run by the tree's dash
#                   as PID 1; works for any tree, e.g. a debootstrap minbase without systemd)
#   --mode systemd  the tree's /sbin/init (systemd) boots to multi-user.target, where a unit runs
#                   the same marker script and powers off
#   --mode auto     systemd if the tree has /sbin/init, else script (default)
# The marker script reports PVFS-TEST lines on the console and writes
# /var/lib/pvfs-boot-marker with a per-run nonce; the host reads that file back from the
# served tree and compares the nonce.
#
# usage: boot-9p-root.sh [--tree DIR] [--mode auto|script|systemd] [--timeout S] [--server diod|pvfsd]
#                        [--store S --vm NAME --host-view DIR] [--msize N] [--opts MOUNTOPTS]
#                        [--transport tcp|virtiofs]
#   --tree DIR    Debian tree to boot (default /srv/pvfs-cache/minbase). diod serves an overlay
#                 of it (upper layer in the work dir), so the tree itself is never modified.
#   --server pvfsd --store S --vm NAME: boot VM NAME from pvfsd instead; the marker files must
#                 then already be in the VM's tree (prepare the template's source tree with
#                 --prepare-tree) and --host-view DIR, a host path showing the VM's tree, is
#                 needed for the read-back.
#   --transport virtiofs (with --server pvfsd): the root over virtio-fs from pvfsd, on the VM's
#                 vhost-user binding (one is made for the run if the VM has none); the guest has
#                 no network at all.
#   --prepare-tree DIR   install the marker script and its systemd unit into DIR and exit
#                 (for building a pvfs template that this test can boot)
# exit status: 0 pass, 1 fail, 2 setup error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PREPARE="" TREE=/srv/pvfs-cache/minbase MODE=auto TIMEOUT="" KIND=diod STORE="" VM="" HOSTVIEW="" MSIZE="" OPTS="" TRANSPORT=tcp
while [ $# -gt 0 ]; do
    case $1 in
    --tree) TREE=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --server) KIND=$2; shift 2 ;;
    --store) STORE=$2; shift 2 ;;
    --vm) VM=$2; shift 2 ;;
    --host-view) HOSTVIEW=$2; shift 2 ;;
    --msize) MSIZE=$2; shift 2 ;;
    --opts) OPTS=$2; shift 2 ;;
    --transport) TRANSPORT=$2; shift 2 ;;
    --prepare-tree) PREPARE=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) gdie "unknown option $1" ;;
    esac
done

# install_marker ROOT MODE: put the marker script (and for systemd a unit) into a tree.
install_marker() {
    local root=$1 mode=$2
    mkdir -p "$root/usr/local/sbin" "$root/var/lib"
    cat >"$root/usr/local/sbin/pvfs-boot-marker" <<'MARKER'
#!/bin/sh
# Installed by Tests/guest/boot-9p-root.sh: proves that the served tree's init ran.
# --pid1: run as the init itself (powers off through sysrq); otherwise from a systemd unit.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
out() { echo "$*" >/dev/console; }
up() { cut -d' ' -f1 /proc/uptime; }
nonce=$(sed -n 's/.*pvfs\.nonce=\([^ ]*\).*/\1/p' /proc/cmdline)
out "PVFS-TEST root-init ok pid $$ at ${UPT:-$(up)}s, init is $(readlink /proc/1/exe)"
rootfs=$(awk '$2 == "/" { print $3 " " $1 " " $4 }' /proc/mounts | tail -1)
want=9p
case " $(cat /proc/cmdline) " in *" pvfs.transport=virtiofs "*) want=virtiofs ;; esac
case $rootfs in
"$want "*) out "PVFS-TEST root-is-$want ok $rootfs" ;;
*) out "PVFS-TEST root-is-$want fail root is: $rootfs" ;;
esac
if . /etc/os-release 2>/dev/null; then out "PVFS-TEST os-release ok $PRETTY_NAME"; else out "PVFS-TEST os-release fail"; fi
if v=$(dpkg-query -W -f='${Version}' dpkg 2>&1); then
    out "PVFS-TEST tree-binaries ok dpkg-query ran: dpkg $v"
else
    out "PVFS-TEST tree-binaries fail dpkg-query: $v"
fi
if [ -d /run/systemd/system ]; then
    state=$(systemctl is-system-running 2>&1)
    out "PVFS-TEST systemd ok is-system-running: $state; failed units: $(systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}' | tr '\n' ' ')"
fi
if echo "$nonce $(uname -r) $(up)" >/var/lib/pvfs-boot-marker.tmp && mv /var/lib/pvfs-boot-marker.tmp /var/lib/pvfs-boot-marker && sync; then
    out "PVFS-TEST marker-written ok nonce $nonce"
else
    out "PVFS-TEST marker-written fail"
fi
out "PVFS-TEST-DONE uptime=$(up)"
if [ "${1:-}" = --pid1 ]; then
    echo o >/proc/sysrq-trigger
    sleep 60
else
    systemctl poweroff --no-block
fi
MARKER
    chmod 755 "$root/usr/local/sbin/pvfs-boot-marker"
    rm -f "$root/var/lib/pvfs-boot-marker"
    if [ "$mode" = systemd ]; then
        mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
        cat >"$root/etc/systemd/system/pvfs-boot-marker.service" <<'UNIT'
[Unit]
Description=pvfs boot test marker
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pvfs-boot-marker
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
UNIT
        ln -sf ../pvfs-boot-marker.service "$root/etc/systemd/system/multi-user.target.wants/pvfs-boot-marker.service"
    fi
}

if [ -n "$PREPARE" ]; then
    [ -d "$PREPARE/usr/bin" ] || gdie "$PREPARE is not a Debian tree"
    install_marker "$PREPARE" systemd
    glog "marker script and pvfs-boot-marker.service installed in $PREPARE"
    exit 0
fi

case $TRANSPORT in
tcp) ;;
virtiofs) [ "$KIND" = pvfsd ] || gdie "--transport virtiofs needs --server pvfsd" ;;
*) gdie "unknown transport $TRANSPORT (tcp or virtiofs)" ;;
esac
# The guest's memory: QEMU's -m and, for virtio-fs, the shared memory backend of the same size.
GUEST_MEM=${PVFS_GUEST_MEM:-1024}

guest_setup
T0=$(now)
KERNEL=$(guest_kernel)
NONCE=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
PORT=$(guest_free_port)

case $KIND in
diod)
    [ -d "$TREE/usr/bin" ] || gdie "$TREE is not a Debian tree (debootstrap --variant=minbase bookworm $TREE)"
    if [ "$MODE" = auto ]; then
        if [ -e "$TREE/sbin/init" ] || [ -L "$TREE/sbin/init" ]; then MODE=systemd; else MODE=script; fi
    fi
    ROOT=$GUEST_WORK/root
    mkdir -p "$ROOT" "$GUEST_WORK/upper" "$GUEST_WORK/ovlwork"
    if mount -t overlay overlay -o "lowerdir=$TREE,upperdir=$GUEST_WORK/upper,workdir=$GUEST_WORK/ovlwork" "$ROOT" 2>/dev/null; then
        guest_on_cleanup "umount -l '$ROOT'"
        glog "serving an overlay of $TREE"
    else
        glog "no overlayfs: copying $TREE"
        cp -a "$TREE/." "$ROOT/"
    fi
    install_marker "$ROOT" "$MODE"
    HOSTVIEW=$ROOT
    ANAME_ARGS=(minbase --aname "$ROOT")
    ;;
pvfsd)
    [ -n "$STORE" ] && [ -n "$VM" ] || gdie "--server pvfsd needs --store and --vm"
    [ "$MODE" != auto ] || MODE=systemd
    ANAME_ARGS=("$VM")
    ;;
*) gdie "unknown server $KIND" ;;
esac
TIMEOUT=${TIMEOUT:-$([ "$MODE" = systemd ] && echo 600 || echo 240)}
server_start "$KIND" "$PORT" "${ROOT:-}" "$STORE" "$GUEST_WORK/server.log"
if [ "$KIND" = pvfsd ] && [ -z "$HOSTVIEW" ]; then
    # The daemon mounts the VM on the host itself, sharing the engine with the guest: the marker
    # goes in through the mount and the guest's marker comes back out through it.
    HOSTVIEW=$GUEST_WORK/view
    mkdir -p "$HOSTVIEW"
    for _ in $(seq 50); do [ -S "$STORE/pvfsd.sock" ] && break; sleep 0.1; done
    "$(pvfs_vm_binary)" mount --store "$STORE" "$VM" "$HOSTVIEW" || gdie "cannot mount VM $VM through pvfsd"
    guest_on_cleanup "'$(pvfs_vm_binary)' umount --store '$STORE' '$HOSTVIEW' 2>/dev/null || umount -l '$HOSTVIEW' 2>/dev/null"
    install_marker "$HOSTVIEW" "$MODE"
fi

QEMU_FS_ARGS=()
if [ "$TRANSPORT" = virtiofs ]; then
    PVFS_VM=$(pvfs_vm_binary)
    # The VM's own vhost-user socket, or one bound for this run (pvfsd listens at once).
    if ! "$PVFS_VM" qemu-args --store "$STORE" "$VM" --transport virtiofs --json >/dev/null 2>&1; then
        "$PVFS_VM" bind --store "$STORE" "$VM" --vhost-user "$GUEST_WORK/vhost.sock" >/dev/null ||
            gdie "cannot bind VM $VM to a vhost-user socket"
        guest_on_cleanup "'$PVFS_VM' unbind --store '$STORE' '$VM' --vhost-user '$GUEST_WORK/vhost.sock' >/dev/null 2>&1"
    fi
    mapfile -t QEMU_FS_ARGS < <("$PVFS_VM" qemu-args --store "$STORE" "$VM" --transport virtiofs --memory "${GUEST_MEM}M" \
        --json | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["socket"]); print("\n".join(r["arguments"]))')
    [ "${#QEMU_FS_ARGS[@]}" -gt 1 ] || gdie "pvfs-vm qemu-args --transport virtiofs gave no options"
    VHOST_SOCKET=${QEMU_FS_ARGS[0]}
    QEMU_FS_ARGS=("${QEMU_FS_ARGS[@]:1}")
    for _ in $(seq 50); do [ -S "$VHOST_SOCKET" ] && break; sleep 0.1; done
    [ -S "$VHOST_SOCKET" ] || gdie "pvfsd does not listen on $VHOST_SOCKET"
    # No network at all: the root comes through the vhost-user-fs device only.
    GUEST_NET_ARGS=(-nic none)
    glog "pvfsd serves VM $VM over virtio-fs on $VHOST_SOCKET: ${QEMU_FS_ARGS[*]}"
fi

INIT_ARGS=()
[ "$MODE" = script ] && INIT_ARGS=(--init /usr/local/sbin/pvfs-boot-marker)
EXTRA="quiet loglevel=3 panic=-1 pvfs.nonce=$NONCE"
[ "$MODE" = script ] && EXTRA+=" -- --pid1"
[ "$MODE" = systemd ] && EXTRA="loglevel=3 panic=-1 systemd.show_status=false pvfs.nonce=$NONCE"
BF_ARGS=("${ANAME_ARGS[@]}" --kernel "$KERNEL" --output "$GUEST_WORK/boot" --on-failure poweroff --append "$EXTRA" "${INIT_ARGS[@]}")
if [ "$TRANSPORT" = virtiofs ]; then
    # The tag is left to its default: the VM's name, which qemu-args gave QEMU too.
    BF_ARGS+=(--transport virtiofs --store "$STORE")
else
    BF_ARGS+=(--transport tcp --server "10.0.2.2:$PORT")
fi
[ -n "$MSIZE" ] && BF_ARGS+=(--msize "$MSIZE")
[ -n "$OPTS" ] && BF_ARGS+=(--mount-options "$OPTS")
T1=$(now)
guest_boot_files "${BF_ARGS[@]}" >&2
[ -s "$GUEST_WORK/boot/initrd.img" ] && [ -s "$GUEST_WORK/boot/cmdline" ] || gdie "boot-files produced no artefacts"
T_BF=$(elapsed "$T1")
CMDLINE=$(cat "$GUEST_WORK/boot/cmdline")
glog "mode $MODE; kernel command line: $CMDLINE"

LOG=$GUEST_WORK/serial.log
QRC=0
guest_boot_qemu "$GUEST_WORK/boot/vmlinuz" "$GUEST_WORK/boot/initrd.img" "$CMDLINE" "$LOG" "$TIMEOUT" "${QEMU_FS_ARGS[@]}" || QRC=$?
[ "$KIND" = pvfsd ] || server_stop

RC=0
guest_results "$LOG" "boot-root/$TRANSPORT/$MODE" || RC=1
tr -d '\r' <"$LOG" | grep -aE 'pvfs-boot\[' | sed 's/^/  initramfs: /' >&2 || true

if [ -n "$HOSTVIEW" ]; then
    if [ "$(cut -d' ' -f1 "$HOSTVIEW/var/lib/pvfs-boot-marker" 2>/dev/null)" = "$NONCE" ]; then
        glog "host check: $HOSTVIEW/var/lib/pvfs-boot-marker holds this run's nonce: $(cat "$HOSTVIEW/var/lib/pvfs-boot-marker")"
    else
        glog "host check: FAILED: marker $(cat "$HOSTVIEW/var/lib/pvfs-boot-marker" 2>&1), want nonce $NONCE"
        RC=1
    fi
else
    glog "host check skipped (no --host-view)"
fi
[ "$QRC" = 0 ] || RC=1
server_stop
MOUNTED=$(tr -d '\r' <"$LOG" | sed -n 's/.*pvfs-boot\[\([0-9.]*\)\]: root mounted.*/\1/p' | head -1)
INITRAN=$(tr -d '\r' <"$LOG" | sed -n 's/.*PVFS-TEST root-init ok pid [0-9]* at \([0-9.]*\)s.*/\1/p' | head -1)
DONEUP=$(tr -d '\r' <"$LOG" | sed -n 's/.*PVFS-TEST-DONE uptime=\([0-9.]*\).*/\1/p' | head -1)
glog "timings: boot-files ${T_BF}s; guest: root mounted at ${MOUNTED:-?}s, tree init running at ${INITRAN:-?}s, marker done at ${DONEUP:-?}s (guest uptime); QEMU wall ${GUEST_BOOT_SECONDS}s; total $(elapsed "$T0")s"
echo "boot-root/$TRANSPORT/$MODE/$KIND: $GUEST_RESULT_SUMMARY qemu_exit=$QRC wall=${GUEST_BOOT_SECONDS}s"
exit "$RC"
