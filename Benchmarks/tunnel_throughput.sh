#!/usr/bin/env bash
# Throughput through client -> relay -> edge on loopback, measured with iperf3, in one run:
#   direct          iperf3 straight to the server (the machine's copy bound)
#   ws, telemetry off   relay/edge/client with no --metrics, text logs at warning level
#   ws, telemetry on    --metrics on every role (scraped every second) and --log-format json at info
# Usage: Benchmarks/tunnel_throughput.sh [seconds per run, default 10] [streams, default 1] [rounds, default 3]
# Off and on alternate for the given rounds and the medians are compared, which evens out the noise of a
# small shared machine.
# Prints a markdown table and writes Benchmarks/results/tunnel_throughput.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
STREAMS=${2:-1}
ROUNDS=${3:-3}
command -v iperf3 >/dev/null || { echo "iperf3 is required (apt-get install iperf3)" >&2; exit 1; }
swift build -c release --product hyrelay >/dev/null
BIN=.build/release/hyrelay
source Benchmarks/lib.sh
wait_log() { for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timeout waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1; }
KEY=$(head -c 32 /dev/urandom | base64)

IPERF_PORT=$(free_port)
iperf3 -s -p "$IPERF_PORT" -D --logfile "$WORK/iperf-server.log"
sleep 0.3
# iperf3 -D forks; find it to stop it later
PIDS+=("$(pgrep -f "iperf3 -s -p $IPERF_PORT" | head -1)")

run_tunnel() { # label, extra flags...
    local label=$1; shift
    local relay_port edge_metrics client_metrics relay_metrics client_port
    relay_port=$(free_port); client_port=$(free_port)
    relay_metrics=$(free_port); edge_metrics=$(free_port); client_metrics=$(free_port)
    local tele_relay=() tele_edge=() tele_client=()
    if [ "$label" = on ]; then
        tele_relay=(--metrics "127.0.0.1:$relay_metrics" --log-format json --log-level info)
        tele_edge=(--metrics "127.0.0.1:$edge_metrics" --log-format json --log-level info)
        tele_client=(--metrics "127.0.0.1:$client_metrics" --log-format json --log-level info)
    else
        tele_relay=(--log-level warning); tele_edge=(--log-level warning); tele_client=(--log-level warning)
    fi
    $BIN relay --listen "127.0.0.1:$relay_port" --hybrid-connection bench --sas-key-name root --sas-key "$KEY" "${tele_relay[@]}" 2>"$WORK/relay-$label.log" &
    PIDS+=($!)
    sleep 0.5
    $BIN edge -e "ws://127.0.0.1:$relay_port" -K root -k "$KEY" -T "bench:127.0.0.1:$IPERF_PORT" "${tele_edge[@]}" 2>"$WORK/edge-$label.log" &
    PIDS+=($!)
    $BIN client -e "ws://127.0.0.1:$relay_port" -K root -k "$KEY" -L "127.0.0.1:$client_port:bench" "${tele_client[@]}" 2>"$WORK/client-$label.log" &
    PIDS+=($!)
    sleep 1.5
    local scraper=""
    if [ "$label" = on ]; then
        ( while true; do for p in $relay_metrics $edge_metrics $client_metrics; do curl -s "127.0.0.1:$p/metrics" >/dev/null; done; sleep 1; done ) &
        scraper=$!
    fi
    measure "$client_port" "$STREAMS"
    [ -n "$scraper" ] && kill "$scraper"
    kill "${PIDS[@]: -3}" 2>/dev/null || true
    sleep 0.5
}

median() { python3 -c 'import statistics,sys; print("%.2f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
DIRECT=$(measure "$IPERF_PORT" "$STREAMS")
OFFS=(); ONS=()
for _ in $(seq "$ROUNDS"); do
    OFFS+=("$(run_tunnel off)")
    ONS+=("$(run_tunnel on)")
done
OFF=$(median "${OFFS[@]}")
ON=$(median "${ONS[@]}")
RATIO=$(python3 -c "print('%.3f' % ($ON / $OFF))")
CPU=$(nproc)
mkdir -p Benchmarks/results
cat > Benchmarks/results/tunnel_throughput.json <<JSON
{"seconds": $SECONDS_PER_RUN, "streams": $STREAMS, "rounds": $ROUNDS, "cores": $CPU, "off_runs": [$(IFS=,; echo "${OFFS[*]}")], "on_runs": [$(IFS=,; echo "${ONS[*]}")], "gbit_per_s": {"direct": $DIRECT, "hyrelay_ws_telemetry_off": $OFF, "hyrelay_ws_telemetry_on": $ON}, "on_over_off": $RATIO}
JSON
echo "| path (iperf3, $STREAMS stream(s), ${SECONDS_PER_RUN} s, median of $ROUNDS, $CPU cores) | Gbit/s |"
echo "| --- | --- |"
echo "| direct | $DIRECT |"
echo "| client -> relay -> edge, ws, telemetry off | $OFF |"
echo "| client -> relay -> edge, ws, telemetry on (metrics scraped 1/s, JSON logs) | $ON |"
echo "| telemetry on / off | $RATIO |"
echo
echo "runs off: ${OFFS[*]}; runs on: ${ONS[*]}"
