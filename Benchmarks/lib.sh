# Shared by the benchmark scripts: process cleanup, free ports, iperf3 measurement. Source it after
# setting SECONDS_PER_RUN.
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# iperf3 client against 127.0.0.1:$1 for SECONDS_PER_RUN seconds, $2 streams; prints Gbit/s received.
measure() {
    iperf3 -c 127.0.0.1 -p "$1" -t "$SECONDS_PER_RUN" -P "${2:-1}" -J > "$WORK/run.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' "$WORK/run.json"
}
