# Tests/guest/xen/release-builds.sh (sourced): the release binaries that run in a Xen dom0.
# dom0 has no Swift runtime, so they are built with --static-swift-stdlib; a binary that is
# missing, older than a source, or linked against the shared Swift runtime is rebuilt.
#
#   ensure_release_builds ROOT [PRODUCT...]
#       builds the products (default: pvfsd pvfs-vm pvfs-template) in ROOT/.build/release when
#       needed; prints what it did on stderr; fails if a build fails

# release_build_inputs ROOT PRODUCT: the files and directories PRODUCT is built from.
release_build_inputs() {
    printf '%s\n' "$1/Sources" "$1/Package.swift"
    [ "$2" = pvfs-xen-test-backend ] && printf '%s\n' "$1/Tests/PVFSTestSupport" "$1/Tests/guest/xen/test-backend"
    return 0
}

release_builds_stale() {
    local root=$1 rel=$1/.build/release b inputs
    shift
    for b in "$@"; do
        [ -x "$rel/$b" ] || return 0
        mapfile -t inputs < <(release_build_inputs "$root" "$b")
        [ -z "$(find "${inputs[@]}" -newer "$rel/$b" -type f -print -quit 2>/dev/null)" ] || return 0
        ldd "$rel/$b" 2>/dev/null | grep -q libswiftCore && return 0
    done
    return 1
}

ensure_release_builds() {
    local root=$1 p
    shift
    [ $# -gt 0 ] || set -- pvfsd pvfs-vm pvfs-template
    if ! release_builds_stale "$root" "$@"; then
        echo "reusing the release binaries in $root/.build/release ($*)" >&2
        return 0
    fi
    echo "building $* (release, --static-swift-stdlib)" >&2
    for p in "$@"; do
        (cd "$root" && swift build -c release --static-swift-stdlib --product "$p") >&2 || {
            echo "build of $p failed" >&2
            return 1
        }
    done
}
