# shellcheck shell=sh
# Tests/guest/lib/results.sh: the one result format of the guest tests, written and read.
#
# Every guest-side check (a test guest's init, fileops.sh, a Xen dom0's init, the init of a root
# booted from pvfs) prints one line per check on its console, and one line when it has finished:
#
#   PVFS-TEST <name> ok|fail|skip <detail...>
#   PVFS-TEST-DONE [summary]
#
# A run passes when at least one check passed, none failed and PVFS-TEST-DONE was printed. Lines
# may carry a console prefix (a timestamp, a guest name): the marker is found anywhere in a line.
# POSIX sh: busybox sh sources it inside guests (the initramfs holds it as /lib/pvfs/results.sh),
# bash on the host (lib.sh sources it).
#
# Writing (guest side):
#   marker NAME ok|fail|skip DETAIL...   one result line
#   marker_check NAME CMD...             ok when CMD succeeds, else fail with CMD's last output line
#   marker_done [SUMMARY]                the closing PVFS-TEST-DONE line
# Reading (host side):
#   markers_of LOG                       the result lines of a serial log, prefixes and \r removed
#   markers_tally LOG                    sets MARKERS_OK, MARKERS_FAIL, MARKERS_SKIP, MARKERS_DONE (yes|no)
#   markers_passed                       after markers_tally: status 0 when the run passed

marker() { echo "PVFS-TEST $*"; }

marker_check() {
    _marker_name=$1
    shift
    if _marker_out=$("$@" 2>&1); then
        marker "$_marker_name" ok ""
    else
        marker "$_marker_name" fail "$(echo "$_marker_out" | tail -1 | cut -c1-300)"
    fi
}

marker_done() { echo "PVFS-TEST-DONE${1:+ $*}"; }

markers_of() {
    tr -d '\r' <"$1" | grep -aoE 'PVFS-TEST(-DONE)?( .*)?$' || true
}

markers_tally() {
    _markers=$(markers_of "$1")
    MARKERS_OK=$(printf '%s\n' "$_markers" | grep -c '^PVFS-TEST [^ ]* ok' || true)
    MARKERS_FAIL=$(printf '%s\n' "$_markers" | grep -c '^PVFS-TEST [^ ]* fail' || true)
    MARKERS_SKIP=$(printf '%s\n' "$_markers" | grep -c '^PVFS-TEST [^ ]* skip' || true)
    MARKERS_DONE=no
    if printf '%s\n' "$_markers" | grep -q '^PVFS-TEST-DONE'; then MARKERS_DONE=yes; fi
}

markers_passed() {
    [ "$MARKERS_DONE" = yes ] && [ "$MARKERS_FAIL" -eq 0 ] && [ "$MARKERS_OK" -gt 0 ]
}
