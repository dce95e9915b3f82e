# Xen 9pfs backend hook: pvfsd serving a VM of a pvfs store over Xen 9pfs rings.
# Sourced by dom0-init.sh; see the hook list at the top of that file.
#
#   pvfsd --store STORE --xen         the daemon in dom0: serves every 9pfs device whose backend
#                                     `path` node names a VM the domain is bound to
#   pvfs-vm attach VM --domid D --tag T
#                                     writes the device's xenstore nodes as libxl does
#   pvfs-vm detach VM --domid D       removes them (at once when the domain is gone)
#   pvfs-vm mount --read-only VM DIR  after the run: dom0 reads what the domU wrote through the
#                                     store (the manifest and boot-marker checks)
# run-xen-9pfs.sh --backend pvfsd puts the binaries (built with --static-swift-stdlib) in
# /usr/local/bin, their shared libraries beside them and the store at $PVFS_XEN_STORE; the VM
# must be bound to the domain (pvfs-vm bind VM --xen-name domU).
XEN_BACKEND="pvfsd (store ${PVFS_XEN_STORE:-?}, VM ${PVFS_XEN_VM:-?})"

# Starts pvfsd in the background (PVFSD_PID), its log appended to /var/log/xen/pvfsd.log.
# PVFS_XEN_PVFSD_PREFIX: a wrapper such as "taskset 1" (experiments); PVFS_XEN_PVFSD_ARGS: options.
start_pvfsd() {
    ${PVFS_XEN_PVFSD_PREFIX:-} pvfsd --store "$PVFS_XEN_STORE" --xen ${PVFS_XEN_PVFSD_ARGS:-} >>/var/log/xen/pvfsd.log 2>&1 &
    PVFSD_PID=$!
}

backend_prepare() {
    t "pvfsd in dom0: $(wc -c </usr/local/bin/pvfsd) bytes"
    start_pvfsd
    sleep 1
    if ! kill -0 "$PVFSD_PID" 2>/dev/null; then
        t "pvfsd exited: $(tail -5 /var/log/xen/pvfsd.log)"
        return 1
    fi
}

# pvfsd killed with SIGKILL and started again while the domU has the device mounted: the new
# instance adopts the connected device as a lost session (docs/xen.md) and says so in the
# backend's error node.
backend_restart() {
    kill -9 "$PVFSD_PID" 2>/dev/null
    wait "$PVFSD_PID" 2>/dev/null
    start_pvfsd
    node=/local/domain/0/backend/9pfs/$1/0/error
    i=0
    while [ $i -lt 60 ]; do
        case $(xenstore-read "$node" 2>/dev/null) in
        *"session lost"*) t "restart: $node = $(xenstore-read "$node")"; return 0 ;;
        esac
        kill -0 "$PVFSD_PID" 2>/dev/null || { t "restarted pvfsd exited: $(tail -3 /var/log/xen/pvfsd.log | tr '\n' ' ')"; return 1; }
        sleep 0.5
        i=$((i + 1))
    done
    t "restart: no lost-session error in $node after 30 s"
    return 1
}

backend_attach() {
    pvfs-vm attach "$PVFS_XEN_VM" --domid "$1" --tag "$3" >/var/log/xen/pvfs-attach.log 2>&1 ||
        { t "attach: $(tail -5 /var/log/xen/pvfs-attach.log)"; return 1; }
    t "attach: $(head -1 /var/log/xen/pvfs-attach.log)"
}

backend_teardown() {
    # xl destroy removes the device with the domain; detach what is left, if anything.
    if xenstore-exists "/local/domain/0/backend/9pfs/$1" 2>/dev/null; then
        pvfs-vm detach "$PVFS_XEN_VM" --domid "$1" --timeout 5 >/var/log/xen/pvfs-detach.log 2>&1 ||
            t "detach: $(tail -2 /var/log/xen/pvfs-detach.log | tr '\n' ' ')"
    fi
    if [ -n "${PVFSD_PID:-}" ] && kill "$PVFSD_PID" 2>/dev/null; then
        i=0
        while kill -0 "$PVFSD_PID" 2>/dev/null && [ $i -lt 40 ]; do sleep 0.25; i=$((i + 1)); done
        kill -0 "$PVFSD_PID" 2>/dev/null && t "pvfsd still running 10 s after SIGTERM"
    fi
    t "pvfsd log: $(grep -ciE 'error|warning|critical' /var/log/xen/pvfsd.log) error/warning lines of $(wc -l </var/log/xen/pvfsd.log)"
    grep -iE 'error|warning|critical' /var/log/xen/pvfsd.log | tail -8 | while read -r l; do t "pvfsd: $l"; done
    t "pvfsd log tail: $(tail -4 /var/log/xen/pvfsd.log 2>/dev/null | tr '\n' ' ')"
}

# What the domU wrote, read back through the store once pvfsd is gone.
backend_host_view() {
    mkdir -p /mnt/pvfs-view
    if pvfs-vm mount --store "$PVFS_XEN_STORE" --read-only "$PVFS_XEN_VM" /mnt/pvfs-view >/var/log/xen/pvfs-mount.log 2>&1; then
        echo /mnt/pvfs-view
    else
        t "pvfs-vm mount: $(tail -3 /var/log/xen/pvfs-mount.log | tr '\n' ' ')" >&2
        echo /mnt/pvfs-view
    fi
}
