#!/usr/bin/env bash
# Dedup of what VMs write: ten VMs provisioned from one template each write the same 100 MiB of
# files through the engine (pvfs-bench-writer: the write path a guest's 9P or FUSE writes take);
# the store's physical growth is measured before and after `pvfs dedup --all`.
#
# Target: growth after dedup <= 1.1 x one copy.
#
#     bench/dedup.sh                      # 10 VMs x 100 MiB in 1 MiB files
#     VMS=4 MIB=50 FILE_KIB=256 bench/dedup.sh
#     BIN=.build/release bench/dedup.sh   # binaries to use (default: release if built, else debug)
#
# Physical size is what `du` reports as allocated for blobs/ and vms/ (the catalog is shown
# separately). The store lives under $TMPDIR (default /tmp), removed at the end.
set -euo pipefail

VMS=${VMS:-10}
MIB=${MIB:-100}
FILE_KIB=${FILE_KIB:-1024}
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${BIN:-}" ]; then
    if [ -x "$root/.build/release/pvfs" ] && [ -x "$root/.build/release/pvfs-bench-writer" ]; then BIN=$root/.build/release; else BIN=$root/.build/debug; fi
fi
for tool in pvfs pvfs-template pvfs-vm pvfs-bench-writer; do
    if [ ! -x "$BIN/$tool" ]; then
        echo "building $tool..." >&2
        (cd "$root" && swift build --product "$tool" >&2)
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/pvfs-dedup-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
export PVFS_STORE=$work/store

files=$(( MIB * 1024 / FILE_KIB ))
bytes=$(( FILE_KIB * 1024 ))
one_copy=$(( files * bytes ))

# A small template (the VMs' writes are what is measured).
mkdir -p "$work/src/etc" "$work/src/usr/bin"
echo bench > "$work/src/etc/hostname"
head -c 300000 /dev/urandom > "$work/src/usr/bin/tool"
"$BIN/pvfs-template" create base --from "$work/src" --quiet > /dev/null
for i in $(seq 1 "$VMS"); do "$BIN/pvfs-vm" provision --template base "vm$i" > /dev/null; done

physical() { du -sB1 "$PVFS_STORE/blobs" "$PVFS_STORE/vms" | awk '{ s += $1 } END { print s }'; }
catalog() { du -cB1 "$PVFS_STORE"/catalog.db* | tail -1 | awk '{ print $1 }'; }
now() { date +%s.%N; }

base=$(physical)
t0=$(now)
for i in $(seq 1 "$VMS"); do "$BIN/pvfs-bench-writer" "$PVFS_STORE" "vm$i" "$files" "$bytes" 42; done
t1=$(now)
written=$(physical)
"$BIN/pvfs" dedup --all --json > "$work/dedup.json"
t2=$(now)
deduped=$(physical)
"$BIN/pvfs" fsck --quick > /dev/null

awk -v vms="$VMS" -v one="$one_copy" -v base="$base" -v written="$written" -v deduped="$deduped" \
    -v t0="$t0" -v t1="$t1" -v t2="$t2" -v cat="$(catalog)" \
    -v files="$files" -v fkib="$FILE_KIB" 'BEGIN {
    mib = 1048576
    tw = t1 - t0; td = t2 - t1
    printf "dedup benchmark: %d VMs each write the same %.0f MiB (%d files of %d KiB) through the engine\n\n", vms, one / mib, files, fkib
    printf "%-22s %14s %14s %12s %10s\n", "stage", "blobs+vms", "growth", "x one copy", "seconds"
    printf "%-22s %14.1f %14s %12s %10s\n", "provisioned", base / mib, "-", "-", "-"
    printf "%-22s %14.1f %14.1f %12.2f %10.1f\n", "after the writes", written / mib, (written - base) / mib, (written - base) / one, tw
    printf "%-22s %14.1f %14.1f %12.2f %10.1f\n", "after pvfs dedup --all", deduped / mib, (deduped - base) / mib, (deduped - base) / one, td
    printf "\n(MiB; catalog %.1f MiB)\n", cat / mib
    ratio = (deduped - base) / one
    printf "target: growth after dedup <= 1.10 x one copy: %s (%.2f)\n", (ratio <= 1.10 ? "met" : "NOT met"), ratio
    exit (ratio <= 1.10 ? 0 : 1)
}'
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("pvfs dedup: %d files shared in %d groups, %d new blobs, %.1f MiB saved, %.2f s" % (r["filesDeduplicated"], r["groups"], r["newBlobs"], r["bytesSaved"]/1048576, r["seconds"]))' "$work/dedup.json" 2>/dev/null || true
