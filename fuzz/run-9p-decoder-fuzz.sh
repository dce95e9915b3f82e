#!/bin/sh
# Fuzzes the 9P codec (decoders, encoders, framer) with libFuzzer and AddressSanitizer.
#
#   fuzz/run-9p-decoder-fuzz.sh [SECONDS] [extra libFuzzer flags...]
#
# Compiles the PVFS9PCodec module's sources (they import only the standard library) with the fuzz entry in
# fuzz/NinePDecoderFuzz.swift, writes a seed corpus, and runs for SECONDS (default 60).
# Work files go to .build/fuzz-9p (crash reproducers there as crash-*); a failure exits non-zero.
set -eu

cd "$(dirname "$0")/.."
seconds=${1:-60}
[ $# -gt 0 ] && shift
work=.build/fuzz-9p
mkdir -p "$work/corpus"
codec=$(ls Sources/PVFS9PCodec/*.swift)
swiftc=${SWIFTC:-swiftc}

echo "building the seed writer and the fuzzer..."
# shellcheck disable=SC2086
"$swiftc" -O -parse-as-library -module-name NinePFuzz $codec fuzz/NinePSeeds.swift -o "$work/seeds"
"$work/seeds" "$work/corpus"
# shellcheck disable=SC2086
"$swiftc" -O -g -sanitize=fuzzer,address -parse-as-library -module-name NinePFuzz \
    $codec fuzz/NinePDecoderFuzz.swift -o "$work/fuzzer"

echo "fuzzing for ${seconds}s..."
cd "$work"
exec ./fuzzer -max_total_time="$seconds" -max_len=70000 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 "$@" corpus
