# Tests/guest/xen/release-builds.sh (sourced): the release binaries that run in a Xen dom0.
# dom0 has no Swift runtime, so they are built with --static-swift-stdlib; a binary that is
# missing, older than a source, or linked against the shared Swift runtime is rebuilt.
#
#   ensure_release_builds ROOT   builds pvfsd, pvfs-vm and pvfs-template in ROOT/.build/release
#                                when needed; prints what it did on stderr; fails if a build fails

release_builds_stale() {
    local rel=$1/.build/release b
    for b in pvfsd pvfs-vm pvfs-template; do
        [ -x "$rel/$b" ] || return 0
        [ -z "$(find "$1/Sources" "$1/Package.swift" -newer "$rel/$b" -type f -print -quit)" ] || return 0
        ldd "$rel/$b" 2>/dev/null | grep -q libswiftCore && return 0
    done
    return 1
}

ensure_release_builds() {
    local p
    if ! release_builds_stale "$1"; then
        echo "reusing the release binaries in $1/.build/release" >&2
        return 0
    fi
    echo "building pvfsd, pvfs-vm, pvfs-template (release, --static-swift-stdlib)" >&2
    for p in pvfsd pvfs-vm pvfs-template; do
        (cd "$1" && swift build -c release --static-swift-stdlib --product "$p") >&2 || {
            echo "build of $p failed" >&2
            return 1
        }
    done
}
