# shellcheck shell=bash
# Tests/guest/lib.sh: shared pieces of the real-guest tests (source it from bash).
#
# The guest machinery (kernel, initramfs recipes, QEMU, 9P servers, binaries and the environment
# knobs PVFS_GUEST_*) is scripts/lib/guest.sh, which the benchmarks use too; this adds what the
# tests check with:
#
#   guest_simple_initramfs NAME INIT MOD...   the common case: busybox + modules + an /init
#   guest_helper                     the static pvfs-guest-helper binary (built once, cached)
#   guest_test_initramfs             the standard test initramfs (guest-init.sh + fileops.sh)
#   guest_posix_suite / guest_posix_image   the POSIX suite program and the ext4 image it runs on
#                                    inside the guest (pvfs.run=posix; run-posix-suite.sh)
#   guest_results LOG                parse PVFS-TEST markers; non-zero on a failure or no DONE
#   guest_initramfs_results          put lib/results.sh into an image (as /lib/pvfs/results.sh)
#   guest_host_check DIR             what fileops.sh wrote, checked on the host
#
# Result format (lib/results.sh, which writes and reads it; printed on the guest's console):
#   PVFS-TEST <name> ok|fail|skip <detail...>
#   PVFS-TEST-DONE [summary]

GUEST_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$GUEST_LIB_DIR/../../scripts/lib/guest.sh"
. "$GUEST_LIB_DIR/lib/results.sh"

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
