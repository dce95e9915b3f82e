# Xen 9pfs backend hook: the domU is created paused without a p9 line, the 9pfs device is written
# into xenstore by hand and QEMU is started as a separate backend process that attaches to the
# domain. These are the same steps a pvfs backend takes (see pvfsd.sh), with QEMU standing in.
# Sourced by dom0-init.sh; see the hook list at the top of that file.
XEN_BACKEND="qemu (external process, xenstore nodes written by hand)"

backend_attach() {
    xs_attach_9pfs "$1" "$3" "$2" || return 1
    /usr/libexec/xen-qemu-system-i386 -xen-domid "$1" -xen-attach -machine xenpv -nodefaults \
        -no-user-config -display none -m 256 >/var/log/xen/backend.log 2>&1 &
    BACKEND_PID=$!
    t "QEMU backend pid $BACKEND_PID for domid $1"
}

backend_teardown() {
    [ -n "${BACKEND_PID:-}" ] && kill "$BACKEND_PID" 2>/dev/null
    xs_detach_9pfs "$1"
}
