# Xen 9pfs backend hook: QEMU started by libxl from an xl "p9 = [...]" line (Xen 4.17's only
# built-in way). Sourced by dom0-init.sh; see the hook list at the top of that file.
XEN_BACKEND="qemu (xl p9=)"

backend_xl_config() {
    echo "p9 = [ 'tag=$2,security_model=none,path=$1' ]"
}
