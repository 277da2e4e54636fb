#!/usr/bin/env bash
# Allocations of one server-side WebSocket upgrade: the relay's handshake against NIO's typed upgrader
# (Benchmarks/UpgradeBenchmark). Counts are exact, so one run is enough; prints JSON.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
gcc -O2 -Wall -shared -fPIC -o "$WORK/alloc_counter.so" Benchmarks/allocations/alloc_counter.c -ldl
swift build -c release --product UpgradeBenchmark >/dev/null 2>&1
LD_PRELOAD="$WORK/alloc_counter.so" ALLOC_COUNTER_FILE="$WORK/counts" .build/release/UpgradeBenchmark
