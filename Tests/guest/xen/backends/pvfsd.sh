# Xen 9pfs backend hook: pvfsd serving the domU's root from a pvfs store over Xen 9pfs rings.
# Sourced by lab-dom0-init.sh; see the hook list at the top of that file.
#
# Assumed command-line contract (the one place to change when pvfsd's interface settles):
#   pvfsd --store STORE --xen                     daemon in dom0: serves 9pfs devices whose
#                                                 backend nodes name it (foreground, logs on stderr)
#   pvfs-vm attach VM --domid D --tag T --store STORE
#                                                 writes the 9pfs xenstore nodes for domain D
#                                                 (backend /local/domain/0/backend/9pfs/D/0) and
#                                                 tells pvfsd to serve VM's merged view on it
#   pvfs-vm detach VM --domid D --store STORE     undoes attach
# run-xen-9pfs.sh --backend pvfsd puts the binaries (built with --static-swift-stdlib) in
# /usr/local/bin, their shared libraries beside them and the store at $PVFS_XEN_STORE.
XEN_BACKEND="pvfsd (store ${PVFS_XEN_STORE:-?}, VM ${PVFS_XEN_VM:-?})"

backend_prepare() {
    PVFSD_VERSION=$(pvfsd --version 2>&1 || pvfsd --help 2>&1 | head -1)
    t "pvfsd in dom0: $PVFSD_VERSION"
    pvfsd --store "$PVFS_XEN_STORE" --xen >/var/log/xen/pvfsd.log 2>&1 &
    PVFSD_PID=$!
    sleep 1
    if ! kill -0 "$PVFSD_PID" 2>/dev/null; then
        t "pvfsd exited: $(tail -5 /var/log/xen/pvfsd.log)"
        return 1
    fi
}

backend_attach() {
    pvfs-vm attach "$PVFS_XEN_VM" --domid "$1" --tag "$3" --store "$PVFS_XEN_STORE" \
        >/var/log/xen/pvfs-attach.log 2>&1 || { t "attach: $(tail -5 /var/log/xen/pvfs-attach.log)"; return 1; }
}

backend_teardown() {
    pvfs-vm detach "$PVFS_XEN_VM" --domid "$1" --store "$PVFS_XEN_STORE" >/dev/null 2>&1
    [ -n "${PVFSD_PID:-}" ] && kill "$PVFSD_PID" 2>/dev/null
    t "pvfsd log tail: $(tail -5 /var/log/xen/pvfsd.log 2>/dev/null | tr '\n' ' ')"
}

# The store is not a plain tree; the manifest check is skipped unless a view is configured.
backend_host_view() { echo "${PVFS_XEN_HOST_VIEW:-}"; }
