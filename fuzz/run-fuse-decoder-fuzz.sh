#!/bin/sh
# Fuzzes the FUSE codec (request decoders, reply decoders and encoders) with libFuzzer and
# AddressSanitizer.
#
#   fuzz/run-fuse-decoder-fuzz.sh [SECONDS] [extra libFuzzer flags...]
#
# Compiles Sources/PVFSFuseCodec (standard library only) with the fuzz entry in
# fuzz/FuseDecoderFuzz.swift, writes a seed corpus (every request Linux's virtiofs client sends),
# and runs for SECONDS (default 60). Work files go to .build/fuzz-fuse (crash reproducers there as
# crash-*); a failure exits non-zero.
set -eu

cd "$(dirname "$0")/.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
work=.build/fuzz-fuse
mkdir -p "$work/corpus"
codec=$(ls Sources/PVFSFuseCodec/*.swift)
swiftc=${SWIFTC:-swiftc}

echo "building the seed writer and the fuzzer..."
# shellcheck disable=SC2086
"$swiftc" -O -parse-as-library -module-name FuseFuzz $codec fuzz/FuseSeeds.swift -o "$work/seeds"
"$work/seeds" "$work/corpus"
# shellcheck disable=SC2086
"$swiftc" -O -g -sanitize=fuzzer,address -parse-as-library -module-name FuseFuzz \
    $codec fuzz/FuseDecoderFuzz.swift -o "$work/fuzzer"

echo "fuzzing for ${seconds}s..."
cd "$work"
exec ./fuzzer -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "$@" corpus
