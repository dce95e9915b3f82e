#!/bin/bash
# Tests/guest/posix-compare.sh: compare the POSIX suite's results on the guest's local filesystem
# with its results on the 9P share, case by case.
#
# usage: posix-compare.sh [--known FILE] [--label NAME] [--save DIR] LOG
#   LOG           a guest's serial log with "PVFS-POSIX local|9p CASE OUTCOME" lines
#                 (guest-init.sh, pvfs.run=posix)
#   --known FILE  differences that are expected, one per line: a shell pattern over case names,
#                 then the reason (default: posix/known-differences next to this script).
#                 Blank lines and lines starting with # are ignored.
#   --label NAME  name in the summary line (default posix)
#   --save DIR    also write local.txt, 9p.txt and differences.txt there
# Prints every unexplained difference ("DIFFERS CASE  local: OUTCOME | 9p: OUTCOME"), the known
# ones counted per pattern with an example, then one summary line:
#   NAME: cases=N same=S known=K differ=D
# exit status: 0 when every case the local filesystem ran gave the same outcome on the share
# (or is a known difference), 1 otherwise (a difference, a missing case, a run that did not
# finish), 2 on bad usage.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KNOWN=$HERE/posix/known-differences LABEL=posix SAVE=""
while [ $# -gt 0 ]; do
    case $1 in
    --known) KNOWN=$2; shift 2 ;;
    --label) LABEL=$2; shift 2 ;;
    --save) SAVE=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
done
[ $# = 1 ] && [ -f "$1" ] || { echo "usage: posix-compare.sh [--known FILE] [--label NAME] [--save DIR] LOG" >&2; exit 2; }
LOG=$1
[ -f "$KNOWN" ] || KNOWN=/dev/null

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
tr -d '\r' <"$LOG" | grep -aoE 'PVFS-POSIX (local|9p) .*$' >"$WORK/all" || true
sed -n 's/^PVFS-POSIX local //p' "$WORK/all" >"$WORK/local.txt"
sed -n 's/^PVFS-POSIX 9p //p' "$WORK/all" >"$WORK/9p.txt"
[ -n "$SAVE" ] && mkdir -p "$SAVE" && cp "$WORK/local.txt" "$WORK/9p.txt" "$SAVE/"

STATUS=0
for side in local 9p; do
    if ! grep -q '^END ' "$WORK/$side.txt"; then
        echo "$LABEL: the $side run did not finish ($(wc -l <"$WORK/$side.txt") lines)" >&2
        STATUS=1
    fi
done

# Known patterns as an awk array; each differing case is matched against them in order.
awk -v known="$KNOWN" -v label="$LABEL" -v save="$SAVE" '
function glob2re(g,   r, i, c) {
    r = "^"
    for (i = 1; i <= length(g); i++) {
        c = substr(g, i, 1)
        if (c == "*") r = r ".*"
        else if (c == "?") r = r "."
        else if (index("\\^$.[]|()+{}/", c)) r = r "\\" c
        else r = r c
    }
    return r "$"
}
BEGIN {
    nk = 0
    while ((getline line < known) > 0) {
        if (line ~ /^[ \t]*(#|$)/) continue
        split(line, fld, /[ \t]+/)
        nk++
        pat[nk] = fld[1]
        re[nk] = glob2re(fld[1])
        reason[nk] = substr(line, length(fld[1]) + 2)
        sub(/^[ \t]+/, "", reason[nk])
        used[nk] = 0
    }
}
FNR == 1 { side = (FILENAME ~ /local\.txt$/) ? 1 : 2 }
/^END / { next }
{
    name = $1
    outcome = substr($0, length($1) + 2)
    if (side == 1) { if (!(name in loc)) order[++n] = name; loc[name] = outcome }
    else remote[name] = outcome
}
END {
    same = 0; knownc = 0; differ = 0
    for (i = 1; i <= n; i++) {
        c = order[i]
        r = (c in remote) ? remote[c] : "(missing)"
        if (loc[c] == r) { same++; continue }
        k = 0
        for (j = 1; j <= nk; j++) if (c ~ re[j]) { k = j; break }
        line = sprintf("%s  local: %s | 9p: %s", c, loc[c], r)
        if (k) { knownc++; used[k]++; if (!(k in example)) example[k] = line; kl[knownc] = line "  [known: " reason[k] "]" }
        else { differ++; dl[differ] = line }
    }
    extra = 0
    for (c in remote) if (!(c in loc)) extra++
    for (j = 1; j <= nk; j++) if (used[j]) printf "  known   %d x %s (%s), e.g. %s\n", used[j], pat[j], reason[j], example[j]
    for (i = 1; i <= differ; i++) print "  DIFFERS " dl[i]
    for (j = 1; j <= nk; j++) if (!used[j]) print "  note: known difference \"" pat[j] "\" did not occur"
    if (extra) print "  note: " extra " cases ran only on the share"
    if (save != "") {
        f = save "/differences.txt"
        for (i = 1; i <= knownc; i++) print "known   " kl[i] > f
        for (i = 1; i <= differ; i++) print "DIFFERS " dl[i] > f
        close(f)
    }
    printf "%s: cases=%d same=%d known=%d differ=%d\n", label, n, same, knownc, differ
    exit (differ > 0 || n == 0) ? 1 : 0
}' "$WORK/local.txt" "$WORK/9p.txt" || STATUS=1
exit $STATUS
