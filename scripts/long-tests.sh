#!/usr/bin/env bash
# The long runs that CI does in short form: the Swift tests under ThreadSanitizer, the whole process suite
# against a ThreadSanitizer build of hyrelay (any race report in any process log fails it), a million
# fuzz inputs per parser, 20,000 random requests at the relay process, a 5000-tunnel load and a 30-minute churn with
# edges killed at random. Takes 50-70 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== swift test --sanitize=thread"
swift test --sanitize=thread --scratch-path .build-tsan

echo "== Debian package (the process suite installs it)"
scripts/package.sh

echo "== process suite against a ThreadSanitizer build"
swift build --sanitize=thread --scratch-path .build-tsan --product hyrelay
LOGS=$(mktemp -d)
HYRELAY_BIN="$PWD/.build-tsan/debug/hyrelay" HYRELAY_LOAD_TUNNELS=300 HYRELAY_MAX_KIB_PER_TUNNEL=4096 \
    .venv/bin/pytest -q --basetemp "$LOGS" Tests/Conformance
if grep -rl "ThreadSanitizer" "$LOGS" >/dev/null; then
    echo "ThreadSanitizer reported races:" >&2
    grep -rl "ThreadSanitizer" "$LOGS" >&2
    exit 1
fi
echo "no ThreadSanitizer report in any process log"

echo "== fuzzing: a million inputs per parser"
HYRELAY_FUZZ_ITERATIONS=1000000 swift test -c release --filter "FuzzTests|AgentFuzzTests"

echo "== fuzzing the relay process: 20,000 random request targets and headers"
HYRELAY_WIRE_FUZZ_ITERATIONS=20000 .venv/bin/pytest -q -s Tests/Conformance/test_wire_fuzz.py

echo "== load: 5000 concurrent tunnels"
swift build -c release --product hyrelay --static-swift-stdlib
HYRELAY_BIN="$PWD/.build/release/hyrelay" HYRELAY_LOAD_TUNNELS=5000 \
    .venv/bin/pytest -q -s Tests/Conformance/test_reliability.py -k thousand

echo "== soak: 30 minutes of tunnel churn, edges killed and restarted at random"
HYRELAY_BIN="$PWD/.build/release/hyrelay" HYRELAY_SOAK_MINUTES=30 \
    .venv/bin/pytest -q -s -p no:warnings Tests/Conformance/test_soak.py
