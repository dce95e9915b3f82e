# Xen 9pfs backend hook for an arbitrary backend command given by the test
# (run-xen-9pfs.sh --backend-cmd CMD [--attach-cmd CMD]). Sourced by dom0-init.sh.
#
#   XEN_ATTACH_CMD   connects the paused domU's 9pfs device; default: write the xenstore
#                    nodes the way libxl does (xs_attach_9pfs)
#   XEN_BACKEND_CMD  the backend process, started in the background after the attach
# Both may use {domid}, {tag} and {path} (the dom0 directory to serve).
XEN_BACKEND="command: ${XEN_BACKEND_CMD:-none}"

subst() { echo "$1" | sed "s|{domid}|$2|g; s|{tag}|$3|g; s|{path}|$4|g"; }

backend_attach() {
    if [ -n "${XEN_ATTACH_CMD:-}" ]; then
        sh -c "$(subst "$XEN_ATTACH_CMD" "$1" "$3" "$2")" >/var/log/xen/attach.log 2>&1 ||
            { t "attach command failed: $(tail -3 /var/log/xen/attach.log)"; return 1; }
    else
        xs_attach_9pfs "$1" "$3" "$2" || return 1
    fi
    if [ -n "${XEN_BACKEND_CMD:-}" ]; then
        sh -c "exec $(subst "$XEN_BACKEND_CMD" "$1" "$3" "$2")" >/var/log/xen/backend.log 2>&1 &
        BACKEND_PID=$!
        t "backend pid $BACKEND_PID: $(subst "$XEN_BACKEND_CMD" "$1" "$3" "$2")"
    fi
}

backend_teardown() {
    [ -n "${BACKEND_PID:-}" ] && kill "$BACKEND_PID" 2>/dev/null
    [ -z "${XEN_ATTACH_CMD:-}" ] && xs_detach_9pfs "$1"
    t "backend log tail: $(tail -3 /var/log/xen/backend.log 2>/dev/null | tr '\n' ' ')"
}
