#!/bin/bash
# The many-core measurements, as one prepared script for a lent host (it has no Rust toolchain
# and no network, so the binaries are built here and carried).
#
#   benches/many-core.sh prepare   # here: release binaries, stripped, into target/dev
#   benches/many-core.sh run       # there, from the repository root, with target/dev carried;
#                                  # writes machine.txt, compare.txt and bridge.txt under $OUT
#
# What it runs: the comparison of issue 13 (`fbuf-compare 5 300`), then the bridge bench of
# issue 15 over 4 KiB to 1 MiB (80 KiB among them: two pieces of 40 KiB by default, a cut not
# yet measured on many cores) with the bridge variants in FBUF_BENCH_BRIDGE_ARGS (by default
# the build's defaults against the large pieces of before 2026-11-28, 07:00 UTC, and against
# smaller ones: see docs/benchmarks.md, "Pieces that fit a batch"; FBUF_BENCH_BRIDGE_ARGS=""
# measures the defaults alone).
# Each part has its own timeout, so a slow host still returns what finished. Either mode may be
# started from any directory.
set -u
cd "$(dirname "$0")/.."
D=target/dev
case "${1:-}" in
prepare)
    cargo build --release -p fbuf-compare -p fbuf-zenoh
    bench=$(cargo bench -p fbuf-zenoh --bench bridge --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*bridge-[^"]*\)".*/\1/p' | tail -1)
    # The bench build (no whole-program LTO) replaced target/release/fbuf-bridge: build it again
    # in the release profile, as the bridge ships.
    cargo build --release -p fbuf-zenoh
    mkdir -p $D
    cp target/release/fbuf-compare target/release/fbuf-bridge "$D"/
    cp "$bench" $D/bridge-bench
    strip $D/fbuf-compare $D/fbuf-bridge $D/bridge-bench
    du -sh $D
    ;;
run)
    OUT=${OUT:-/tmp/many-core}
    mkdir -p "$OUT"
    R=$(pwd)/$D
    { date -u; nproc; lscpu | grep -E "Model name|Socket|Thread|NUMA node\(s\)|L2|L3"; uname -r; } \
        > "$OUT"/machine.txt 2>&1
    cat "$OUT"/machine.txt
    cd /tmp
    # COMPARE=0 skips the comparison (when only the bridge changed since the last run).
    if [ "${COMPARE:-1}" != 0 ]; then
        timeout 90 "$R"/fbuf-compare 5 300 > "$OUT"/compare.txt 2> "$OUT"/compare.err
        echo "compare rc=$?"
    fi
    FBUF_BRIDGE_BIN=$R/fbuf-bridge FBUF_BENCH_ROUNDS=${FBUF_BENCH_ROUNDS:-5} \
        FBUF_BENCH_SCALE=${FBUF_BENCH_SCALE:-4} \
        FBUF_BENCH_SIZES=${FBUF_BENCH_SIZES:-4,64,80,96,128,256,1024} \
        FBUF_BENCH_BRIDGE_ARGS=${FBUF_BENCH_BRIDGE_ARGS-";--large-piece-kib 128;--large-piece-kib 32"} \
        timeout "${BRIDGE_TIMEOUT:-450}" "$R"/bridge-bench > "$OUT"/bridge.txt 2> "$OUT"/bridge.err
    echo "bridge rc=$?"
    date -u
    grep -v "^fbuf-bridge: \(im\|ex\)porting\|^round" "$OUT"/bridge.err | head -20
    grep -A3 "spin floor\|raw ring 1/call" "$OUT"/compare.txt 2> /dev/null | head -12
    # The tables after the last round that finished (each round prints them all again).
    tac "$OUT"/bridge.txt | sed '/^## after round/q' | tac
    ;;
*)
    sed -n 2,13p "$0"
    exit 2
    ;;
esac
