#!/usr/bin/env bash
# Builds hyrelay and runs it on embedded defaults: a relay on 127.0.0.1:9350 with the hybrid
# connection "demo", and prints how to reach it. Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build -c release --product hyrelay
exec .build/release/hyrelay demo --metrics 127.0.0.1:9464 "$@"
