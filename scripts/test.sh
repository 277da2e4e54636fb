#!/usr/bin/env bash
# The whole test suite: Swift unit and integration tests, then the Python conformance suite against
# the built relay binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== swift build (debug, with tests)"
swift build --build-tests
echo "== swift test"
swift test
echo "== Debian package (scripts/package.sh), installed and checked by the conformance suite"
scripts/package.sh
echo "== conformance suite (Tests/Conformance) against .build/debug/hyrelay"
HYRELAY_BIN="$PWD/.build/debug/hyrelay" .venv/bin/pytest -q Tests/Conformance
